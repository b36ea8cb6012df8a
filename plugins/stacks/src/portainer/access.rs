//! Who may use what besides administrators: users and teams given a
//! resource (an endpoint, an endpoint group, a registry).

use berth_sdk::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::portainer::teams::teams_of;
use crate::portainer::users::User;
use crate::portainer::{ADMIN, Payload, fail};

/// Ids as 1.21+'s access policies: `{"ID": {"RoleId": 0}}`.
pub(super) fn policies(ids: &[u64]) -> Value {
    Value::Object(
        ids.iter()
            .map(|id| (id.to_string(), json!({ "RoleId": 0 })))
            .collect(),
    )
}

/// Who may use a resource besides admins: users and teams, as 1.x up to
/// 1.20 gave them (`AuthorizedUsers`, `AuthorizedTeams`) or as 1.21+ does
/// (`UserAccessPolicies`, `TeamAccessPolicies`, keyed by id).
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
pub(super) struct Access {
    pub(super) authorized_users: Option<Vec<u64>>,
    pub(super) authorized_teams: Option<Vec<u64>>,
    pub(super) user_access_policies: Option<serde_json::Map<String, Value>>,
    pub(super) team_access_policies: Option<serde_json::Map<String, Value>>,
}

impl Access {
    /// Apply what the body gives to a resource's grants; an id that is
    /// not a number is refused.
    pub(super) fn apply(self, users: &mut Vec<u64>, teams: &mut Vec<u64>) -> Result<(), Response> {
        let ids = |policies: serde_json::Map<String, Value>| {
            policies
                .keys()
                .map(|k| k.parse::<u64>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| {
                    fail(
                        400,
                        "Invalid request payload",
                        "access policies are keyed by id",
                    )
                })
        };
        if let Some(given) = self.authorized_users {
            *users = given;
        }
        if let Some(given) = self.authorized_teams {
            *teams = given;
        }
        if let Some(p) = self.user_access_policies {
            *users = ids(p)?;
        }
        if let Some(p) = self.team_access_policies {
            *teams = ids(p)?;
        }
        Ok(())
    }
}

impl Payload for Access {}

/// Whether `user` is an admin, one of `users`, or in one of `teams`.
pub(super) fn granted(user: &User, users: &[u64], teams: &[u64]) -> Result<bool, Response> {
    if user.role == ADMIN || users.contains(&user.id) {
        return Ok(true);
    }
    if teams.is_empty() {
        return Ok(false);
    }
    Ok(teams_of(user)?.iter().any(|t| teams.contains(t)))
}
