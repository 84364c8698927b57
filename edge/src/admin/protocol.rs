//! The admin socket's wire format: one JSON request line from the CLI, one JSON response line
//! from the edge, then the connection closes.
//!
//! ```text
//! → {"action":"user-disable","name":"alice","enable":false}
//! ← {"result":"user-disable","name":"alice","enabled":false,"sessions_closed":1}
//! ```
//!
//! A request line is at most [`MAX_REQUEST_LINE`] bytes. Anything that does not parse is
//! answered with `{"result":"error","message":…}`; the edge never panics on it. Responses are
//! rendered to the same human output whether a running edge or the offline path made them
//! ([`Response::render`]).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Longest request line accepted, newline included (a backup path is the longest field).
pub const MAX_REQUEST_LINE: usize = 64 * 1024;

/// Longest response line the CLI reads (responses are small; this only bounds a bad peer).
pub const MAX_RESPONSE_LINE: usize = 1024 * 1024;

/// What the CLI asks a running edge to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Users, queued envelopes, disk use, and live figures.
    Stats,
    /// Create an invite token.
    Invite,
    /// Disable (or re-enable) a user; disabling also closes its live sessions.
    UserDisable {
        /// The user.
        name: String,
        /// Re-enable instead.
        enable: bool,
    },
    /// A consistent copy of the store and the TLS material into `to` (an absolute path,
    /// written by the edge process).
    Backup {
        /// Destination directory; must not exist or be empty.
        to: PathBuf,
    },
    /// Give back the disk space of deleted entries.
    Compact,
}

/// Figures only a running edge has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveStats {
    /// Logged-in sessions (one per connected device).
    pub sessions: u64,
    /// Open QUIC connections (logged in or not).
    pub quic_connections: i64,
    /// Open TCP+TLS connections (logged in or not).
    pub tcp_connections: i64,
    /// Group commits since start.
    pub group_commits: u64,
    /// Write operations committed since start.
    pub committed_ops: u64,
}

/// The answer to a [`Request`]; also what the offline path produces, so that both print the
/// same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Response {
    /// Store census.
    Stats {
        /// Storage engine name.
        engine: String,
        /// Registered users.
        users: u64,
        /// Items waiting in all mailboxes.
        queued: u64,
        /// Bytes the database occupies.
        disk_bytes: u64,
        /// Bytes of every key and value stored (what the data takes, whatever the engine's
        /// file layout).
        stored_bytes: u64,
        /// Present when a running edge answered.
        live: Option<LiveStats>,
    },
    /// A new invite token.
    Invite {
        /// The token to hand to the invitee.
        token: String,
    },
    /// The flag was set.
    UserDisable {
        /// The user.
        name: String,
        /// The account's state now.
        enabled: bool,
        /// Live sessions closed (a running edge only).
        sessions_closed: Option<u64>,
    },
    /// A verified backup was made.
    Backup {
        /// The data directory backed up.
        from: PathBuf,
        /// Where the copy is.
        to: PathBuf,
        /// Users in the copy.
        users: u64,
        /// Queued envelopes (mailbox items) in the copy.
        queued: u64,
    },
    /// The store was compacted.
    Compact {
        /// Storage engine name.
        engine: String,
        /// Database bytes before.
        bytes_before: u64,
        /// Database bytes after.
        bytes_after: u64,
        /// When the store was rewritten into a fresh, verified copy (sled): its entries.
        rewritten_entries: Option<u64>,
    },
    /// The request failed or was refused; `message` says why and what to do.
    Error {
        /// For the sysadmin.
        message: String,
    },
}

/// Parses one request line (with or without its trailing newline).
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    if line.len() > MAX_REQUEST_LINE {
        return Err(format!(
            "request longer than {MAX_REQUEST_LINE} bytes ({} bytes)",
            line.len()
        ));
    }
    let text = std::str::from_utf8(line).map_err(|_| "request is not UTF-8".to_owned())?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    if text.contains('\n') {
        return Err("one request per connection, on one line".into());
    }
    let request: Request =
        serde_json::from_str(text).map_err(|e| format!("malformed request: {e}"))?;
    // serde ignores unknown fields next to an internally tagged unit variant
    // (`{"action":"stats","force":true}`): refuse them here, as for the other variants.
    let given: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|e| format!("malformed request: {e}"))?;
    if let Ok(serde_json::Value::Object(known)) = serde_json::to_value(&request) {
        if let Some(unknown) = given.keys().find(|k| !known.contains_key(*k)) {
            return Err(format!("malformed request: unknown field `{unknown}`"));
        }
    }
    Ok(request)
}

/// One value as one JSON line, newline included.
pub fn to_line<T: Serialize>(value: &T) -> String {
    // Serialising these plain enums cannot fail (no maps with non-string keys, no foreign
    // Serialize impls); a path that is not UTF-8 is the one exception, answered as an error.
    let mut line = serde_json::to_string(value).unwrap_or_else(|e| {
        format!(
            "{{\"result\":\"error\",\"message\":{}}}",
            serde_json::Value::String(format!("cannot encode the answer: {e}"))
        )
    });
    line.push('\n');
    line
}

/// Parses one response line.
pub fn parse_response(line: &[u8]) -> Result<Response, String> {
    serde_json::from_slice(line.strip_suffix(b"\n").unwrap_or(line))
        .map_err(|e| format!("malformed answer from the edge: {e}"))
}

impl Response {
    /// An error answer.
    pub fn error(message: impl Into<String>) -> Self {
        Self::Error {
            message: message.into(),
        }
    }

    /// The human output of the CLI (stdout), or the error message for [`Response::Error`].
    pub fn render(&self) -> Result<String, String> {
        Ok(match self {
            Self::Stats {
                engine,
                users,
                queued,
                disk_bytes,
                stored_bytes,
                live,
            } => {
                let mut out = format!(
                    "storage engine: {engine}\nusers: {users}\nqueued envelopes: {queued}\n\
                     disk bytes: {disk_bytes}\nstored bytes: {stored_bytes}\n"
                );
                if let Some(l) = live {
                    out += &format!(
                        "live sessions: {}\nopen connections: {} quic, {} tcp\n\
                         group commits since start: {} ({} writes)\n",
                        l.sessions,
                        l.quic_connections,
                        l.tcp_connections,
                        l.group_commits,
                        l.committed_ops
                    );
                }
                out
            }
            Self::Invite { token } => format!("{token}\n"),
            Self::UserDisable {
                name,
                enabled,
                sessions_closed,
            } => {
                let state = if *enabled { "enabled" } else { "disabled" };
                let mut out = format!("{name}: {state}\n");
                if let Some(n) = sessions_closed.filter(|n| *n > 0) {
                    out += &format!("closed {n} live session(s) of {name}\n");
                }
                out
            }
            Self::Backup {
                from,
                to,
                users,
                queued,
            } => format!(
                "backup of {} in {}: {users} users, {queued} queued envelopes, verified\n",
                from.display(),
                to.display()
            ),
            Self::Compact {
                engine,
                bytes_before,
                bytes_after,
                rewritten_entries,
            } => {
                let how = match rewritten_entries {
                    Some(n) => format!("rewrote {n} entries into a fresh copy and verified it"),
                    None => "major compaction".to_owned(),
                };
                format!(
                    "compacted the {engine} store ({how}): disk bytes {bytes_before} before, \
                     {bytes_after} after\n"
                )
            }
            Self::Error { message } => return Err(message.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_from_one_json_line() {
        assert_eq!(
            parse_request(b"{\"action\":\"stats\"}\n"),
            Ok(Request::Stats)
        );
        assert_eq!(
            parse_request(br#"{"action":"user-disable","name":"alice","enable":true}"#),
            Ok(Request::UserDisable {
                name: "alice".into(),
                enable: true
            })
        );
        assert_eq!(
            parse_request(br#"{"action":"backup","to":"/srv/b"}"#),
            Ok(Request::Backup {
                to: PathBuf::from("/srv/b")
            })
        );
        // Round trip of every request.
        for r in [
            Request::Stats,
            Request::Invite,
            Request::Compact,
            Request::UserDisable {
                name: "bob".into(),
                enable: false,
            },
            Request::Backup { to: "/x".into() },
        ] {
            assert_eq!(parse_request(to_line(&r).as_bytes()), Ok(r));
        }
    }

    #[test]
    fn bad_requests_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"\n",
            b"stats",
            b"{",
            b"[]",
            b"null",
            b"{\"action\":\"format-disk\"}",
            b"{\"action\":\"migrate\"}",
            b"{\"action\":\"user-disable\"}",
            b"{\"action\":\"user-disable\",\"name\":7,\"enable\":false}",
            b"{\"action\":\"stats\",\"extra\":1}",
            b"{\"action\":\"stats\"}\n{\"action\":\"stats\"}",
            b"{\"action\":\"stats\"} trailing",
            b"\xff\xfe",
        ] {
            let e = parse_request(bad).unwrap_err();
            assert!(!e.is_empty(), "{bad:?}");
        }
        let e = parse_request(b"{\"action\":\"format-disk\"}").unwrap_err();
        assert!(e.contains("format-disk"), "{e}");
    }

    #[test]
    fn request_length_is_bounded() {
        let name = "a".repeat(MAX_REQUEST_LINE);
        let line = to_line(&Request::UserDisable {
            name,
            enable: false,
        });
        let e = parse_request(line.as_bytes()).unwrap_err();
        assert!(e.contains("longer than 65536"), "{e}");
        // Just under the limit parses.
        let name = "a".repeat(MAX_REQUEST_LINE - 60);
        let line = to_line(&Request::UserDisable {
            name: name.clone(),
            enable: false,
        });
        assert!(line.len() <= MAX_REQUEST_LINE);
        assert!(parse_request(line.as_bytes()).is_ok());
    }

    #[test]
    fn responses_round_trip_and_render() {
        let stats = Response::Stats {
            engine: "fjall".into(),
            users: 2,
            queued: 5,
            disk_bytes: 1000,
            stored_bytes: 800,
            live: Some(LiveStats {
                sessions: 1,
                quic_connections: 1,
                tcp_connections: 0,
                group_commits: 9,
                committed_ops: 12,
            }),
        };
        assert_eq!(
            parse_response(to_line(&stats).as_bytes()),
            Ok(stats.clone())
        );
        let text = stats.render().unwrap();
        assert!(text.contains("queued envelopes: 5\n"), "{text}");
        assert!(text.contains("live sessions: 1\n"), "{text}");
        let backup = Response::Backup {
            from: "/d".into(),
            to: "/b".into(),
            users: 2,
            queued: 5,
        };
        assert_eq!(
            backup.render().unwrap(),
            "backup of /d in /b: 2 users, 5 queued envelopes, verified\n"
        );
        let err = Response::error("stop the edge first");
        assert_eq!(parse_response(to_line(&err).as_bytes()), Ok(err.clone()));
        assert_eq!(err.render(), Err("stop the edge first".into()));
        assert!(parse_response(b"{\"result\":\"nope\"}").is_err());
    }
}
