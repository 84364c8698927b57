//! The opening exchange of a connection as a plain state machine (no sockets, no clocks):
//! `Hello` → `ServerHello` → `Login`/`Register` → `Welcome`.
//!
//! Drive it by sending [`Login::start`]'s frame, then feeding every received frame to
//! [`Login::handle`] and acting on the returned [`LoginStep`] until it is `Welcome` or `Fail`.

use crate::{ClientError, Identity};
use missive_proto::{
    Frame, Hello, Pong, Register, ServerHello, Welcome, EXPORTER_LEN, MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
};

/// Log in as an existing device, or create the account first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LoginMode {
    /// `Login` with the device key.
    Login,
    /// `Register` the user with this device key (and invite token, if the server wants one).
    Register {
        /// The invite token.
        invite: Option<String>,
    },
    /// `LinkDevice`: join the user's account as a new device with a link code; the server
    /// picks the device id (the identity's is ignored).
    Link {
        /// The link code.
        code: String,
    },
    /// `TransferLogin`: a connection of its own for one media transfer (the TCP+TLS
    /// fallback's transfer stream); the device's session stays where it is.
    Transfer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitServerHello,
    AwaitWelcome,
    Done,
}

/// What the caller must do after feeding a frame.
#[derive(Debug)]
pub(crate) enum LoginStep {
    /// Write these frames, keep reading.
    Send(Vec<Frame>),
    /// Logged in. `max_frame` is the server's announced limit.
    Welcome {
        /// The server's `Welcome`.
        welcome: Welcome,
        /// The server's maximum frame payload.
        max_frame: u32,
    },
    /// The login failed; close the connection.
    Fail(ClientError),
}

/// One connection's login exchange.
pub(crate) struct Login {
    identity: Identity,
    mode: LoginMode,
    exporter: [u8; EXPORTER_LEN],
    state: State,
    max_frame: u32,
}

impl Login {
    /// Starts the exchange; returns the machine and the `Hello` to send first.
    pub(crate) fn start(
        identity: Identity,
        mode: LoginMode,
        exporter: [u8; EXPORTER_LEN],
        client_name: &str,
    ) -> (Self, Frame) {
        let hello = Hello {
            min_version: MIN_PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            client: client_name.chars().take(64).collect(),
        };
        let login = Self {
            identity,
            mode,
            exporter,
            state: State::AwaitServerHello,
            max_frame: 0,
        };
        (login, hello.into())
    }

    /// Feeds one frame received from the server.
    pub(crate) fn handle(&mut self, frame: Frame) -> LoginStep {
        match (self.state, frame) {
            (_, Frame::Error(e)) => {
                self.state = State::Done;
                LoginStep::Fail(ClientError::from_error_frame(e.code, &e.message))
            }
            (State::AwaitServerHello | State::AwaitWelcome, Frame::Ping(p)) => {
                LoginStep::Send(vec![Pong { nonce: p.nonce }.into()])
            }
            (State::AwaitServerHello, Frame::ServerHello(sh)) => self.on_server_hello(sh),
            (State::AwaitWelcome, Frame::Welcome(w)) => {
                self.state = State::Done;
                let linked = matches!(self.mode, LoginMode::Link { .. });
                if w.user != self.identity.user || (!linked && w.device != self.identity.device) {
                    return LoginStep::Fail(ClientError::AuthFailed(format!(
                        "server welcomed {}/{} instead of {}/{}",
                        w.user, w.device.0, self.identity.user, self.identity.device.0
                    )));
                }
                LoginStep::Welcome {
                    welcome: w,
                    max_frame: self.max_frame,
                }
            }
            (state, other) => {
                self.state = State::Done;
                LoginStep::Fail(ClientError::UnexpectedFrame {
                    frame: other.name(),
                    state: match state {
                        State::AwaitServerHello => "waiting for ServerHello",
                        State::AwaitWelcome => "waiting for Welcome",
                        State::Done => "already logged in",
                    },
                })
            }
        }
    }

    fn on_server_hello(&mut self, sh: ServerHello) -> LoginStep {
        if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&sh.version) {
            self.state = State::Done;
            return LoginStep::Fail(ClientError::UnsupportedVersion {
                server: sh.version,
                min: MIN_PROTOCOL_VERSION,
                max: PROTOCOL_VERSION,
            });
        }
        self.max_frame = sh.max_frame;
        self.state = State::AwaitWelcome;
        let signature = self.identity.sign_login(&sh.challenge, &self.exporter);
        let frame: Frame = match &self.mode {
            LoginMode::Link { code } => {
                use ed25519_dalek::Signer;
                // Device 0: the server has not picked the new device's id yet.
                let transcript = missive_proto::login_transcript(
                    &sh.challenge,
                    &self.exporter,
                    &self.identity.user,
                    missive_proto::DeviceId(0),
                );
                missive_proto::LinkDevice {
                    user: self.identity.user.clone(),
                    code: code.clone(),
                    device_key: self.identity.public_key(),
                    signature: self.identity.signing_key.sign(&transcript).to_bytes(),
                }
                .into()
            }
            LoginMode::Login => missive_proto::Login {
                user: self.identity.user.clone(),
                device: self.identity.device,
                signature,
            }
            .into(),
            LoginMode::Transfer => missive_proto::TransferLogin {
                user: self.identity.user.clone(),
                device: self.identity.device,
                signature,
            }
            .into(),
            LoginMode::Register { invite } => Register {
                user: self.identity.user.clone(),
                device: self.identity.device,
                device_key: self.identity.public_key(),
                invite: invite.clone(),
                signature,
            }
            .into(),
        };
        LoginStep::Send(vec![frame])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};
    use missive_proto::{login_transcript, DeviceId, ErrorCode, Ping};

    fn server_hello(version: u16) -> Frame {
        ServerHello {
            version,
            challenge: [5; 32],
            max_frame: 2 << 20,
        }
        .into()
    }

    #[test]
    fn register_flow_signs_the_transcript() {
        let id = Identity::generate("alice", DeviceId(1));
        let exporter = [3u8; 32];
        let (mut login, hello) = Login::start(
            id.clone(),
            LoginMode::Register {
                invite: Some("tok".into()),
            },
            exporter,
            "test",
        );
        match hello {
            Frame::Hello(h) => {
                assert_eq!(
                    (h.min_version, h.max_version),
                    (MIN_PROTOCOL_VERSION, PROTOCOL_VERSION)
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(login.handle(Ping { nonce: 9 }.into()), LoginStep::Send(f) if f == vec![Frame::from(Pong { nonce: 9 })])
        );
        let LoginStep::Send(frames) = login.handle(server_hello(PROTOCOL_VERSION)) else {
            panic!("expected Register")
        };
        let Frame::Register(r) = &frames[0] else {
            panic!("expected Register")
        };
        assert_eq!(r.invite.as_deref(), Some("tok"));
        assert_eq!(r.device_key, id.public_key());
        let key = VerifyingKey::from_bytes(&r.device_key).unwrap();
        let transcript = login_transcript(&[5; 32], &exporter, "alice", DeviceId(1));
        key.verify(&transcript, &Signature::from_bytes(&r.signature))
            .unwrap();
        let step = login.handle(
            Welcome {
                user: "alice".into(),
                device: DeviceId(1),
                server_time_ms: 1,
            }
            .into(),
        );
        assert!(matches!(step, LoginStep::Welcome { max_frame, .. } if max_frame == 2 << 20));
    }

    #[test]
    fn errors_and_surprises_fail_typed() {
        let id = Identity::generate("bob", DeviceId(1));
        let (mut login, _) = Login::start(id.clone(), LoginMode::Login, [0; 32], "t");
        let _ = login.handle(server_hello(PROTOCOL_VERSION));
        let step = login.handle(missive_proto::Error::new(ErrorCode::UserTaken, "taken").into());
        assert!(matches!(step, LoginStep::Fail(ClientError::UserTaken)));

        let (mut login, _) = Login::start(id.clone(), LoginMode::Login, [0; 32], "t");
        assert!(matches!(
            login.handle(server_hello(PROTOCOL_VERSION + 1)),
            LoginStep::Fail(ClientError::UnsupportedVersion { .. })
        ));

        let (mut login, _) = Login::start(id, LoginMode::Login, [0; 32], "t");
        assert!(matches!(
            login.handle(Pong { nonce: 1 }.into()),
            LoginStep::Fail(ClientError::UnexpectedFrame { .. })
        ));
    }
}
