//! A daemon speaking the dokku-daemon socket protocol, for tests (Dokku
//! itself cannot be installed here).
//!
//! One command per line, several per connection, answered in order, each
//! answer one line `{"ok":...,"output":"..."}` escaped the way the real
//! daemon does it: only newlines and double quotes, so output with
//! backslashes or control characters is invalid JSON. Commands are
//! serialised by a lock, leading flags are stripped before the name check,
//! and a small in-memory app list backs `apps`, `apps:create` and
//! `apps:destroy`. Test-only commands: `slow SECONDS` and `weird` (output
//! with the characters that break JSON).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const KNOWN: &[&str] = &[
    "apps",
    "apps:list",
    "apps:create",
    "apps:destroy",
    "commands",
    "refresh",
    "version",
    "slow",
    "weird",
];

/// A running test daemon.
pub struct Dokkud {
    pub socket: PathBuf,
    listener: Option<UnixListener>,
}

impl Dokkud {
    /// Listen on `dir/dokku-daemon.sock` with apps `api`, `dokku-api`,
    /// `hello_world`.
    pub fn start(dir: &Path) -> Dokkud {
        let socket = dir.join("dokku-daemon.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let apps = Arc::new(Mutex::new(vec![
            "api".to_string(),
            "dokku-api".into(),
            "hello_world".into(),
        ]));
        let accept = listener.try_clone().unwrap();
        std::thread::spawn(move || {
            for stream in accept.incoming() {
                let Ok(stream) = stream else { return };
                let apps = apps.clone();
                std::thread::spawn(move || serve(stream, &apps));
            }
        });
        Dokkud {
            socket,
            listener: Some(listener),
        }
    }

    /// Stop answering: the socket disappears, as when the daemon is down.
    pub fn stop(&mut self) {
        self.listener.take();
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn serve(stream: UnixStream, apps: &Mutex<Vec<String>>) {
    let mut writer = stream.try_clone().unwrap();
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        // The daemon's lock: one command at a time.
        let (ok, output) = {
            let mut apps = apps.lock().unwrap();
            answer(line.trim(), &mut apps)
        };
        let encoded = output.replace('\n', "\\n").replace('"', "\\\"");
        if writeln!(writer, "{{\"ok\":{ok},\"output\":\"{encoded}\"}}").is_err() {
            return;
        }
    }
}

fn answer(line: &str, apps: &mut Vec<String>) -> (bool, String) {
    let mut words: Vec<&str> = line.split_whitespace().collect();
    loop {
        match words.first() {
            Some(&("--quiet" | "--detach" | "--trace" | "--rm-container" | "--rm" | "--force")) => {
                words.remove(0);
            }
            Some(&"--app") => {
                words.drain(..words.len().min(2));
            }
            _ => break,
        }
    }
    let Some(name) = words.first().copied() else {
        return (false, "Invalid command".into());
    };
    let arg = words.get(1).copied();
    match name {
        "enter" | "shell" => (false, "Not implemented".into()),
        n if n.ends_with("help") => (true, "Usage: dokku [--quiet|--trace|--rm-container|--rm|--force] COMMAND <app> [command-specific-options]".into()),
        n if !KNOWN.contains(&n) => (false, "Invalid command".into()),
        "commands" => (true, KNOWN.join("\n")),
        "refresh" => (true, "Refreshed commands".into()),
        "version" => (true, "dokku version 0.35.0".into()),
        "apps" | "apps:list" => (true, format!("=====> My Apps\n{}", apps.join("\n"))),
        "apps:create" => match arg {
            None => (false, " !     App name must be specified".into()),
            Some(app) if apps.iter().any(|a| a == app) => (false, format!(" !     Name {app} is already taken")),
            Some(app) => {
                apps.push(app.to_string());
                (true, format!("-----> Creating {app}..."))
            }
        },
        "apps:destroy" => {
            if !line.split_whitespace().any(|w| w == "--force") {
                return (false, "Requires --force flag".into());
            }
            match arg.filter(|a| !a.starts_with("--")) {
                Some(app) if apps.iter().any(|a| a == app) => {
                    apps.retain(|a| a != app);
                    (true, format!("-----> Destroying {app} (including all add-ons)"))
                }
                Some(app) => (false, format!(" !     App {app} does not exist")),
                None => (false, " !     App name must be specified".into()),
            }
        }
        "slow" => {
            let secs: u64 = arg.and_then(|a| a.parse().ok()).unwrap_or(5);
            std::thread::sleep(Duration::from_secs(secs));
            (true, format!("slept {secs} s"))
        }
        "weird" => (true, "C:\\temp\\dir \u{1b}[1G\u{1b}[32mgreen\u{1b}[0m\ttab\u{7} \"quoted\"\nline two".into()),
        _ => (false, "Invalid command".into()),
    }
}
