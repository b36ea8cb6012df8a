//! The capabilities a plugin can ask for and an operator can grant, and
//! sets of them.

use std::fmt;
use std::str::FromStr;

/// Makes [`Capability`] from the list in `wit/capabilities.in`.
macro_rules! capabilities {
    ($($(#[doc = $doc:literal])* $variant:ident = $name:literal,)*) => {
        /// A capability a plugin can ask for and an operator can grant.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Capability {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Capability {
            pub const ALL: [Capability; [$($name),*].len()] = [$(Capability::$variant),*];

            /// The name used in manifests and config.
            pub fn name(self) -> &'static str {
                match self {
                    $(Capability::$variant => $name,)*
                }
            }
        }
    };
}

include!("../../wit/capabilities.in");

impl Capability {
    fn bit(self) -> u32 {
        1 << self as u32
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Capability {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        Capability::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or(())
    }
}

/// A set of capabilities.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapSet(u32);

impl CapSet {
    pub fn contains(self, cap: Capability) -> bool {
        self.0 & cap.bit() != 0
    }

    pub fn names(self) -> Vec<&'static str> {
        Capability::ALL
            .into_iter()
            .filter(|c| self.contains(*c))
            .map(Capability::name)
            .collect()
    }
}

impl FromIterator<Capability> for CapSet {
    fn from_iter<I: IntoIterator<Item = Capability>>(iter: I) -> Self {
        CapSet(iter.into_iter().fold(0, |bits, c| bits | c.bit()))
    }
}
