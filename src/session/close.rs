//! How a session ends: why ([`End`]), and closing with `BYE` after answering everything it
//! read, then leaving its rooms and giving up its name.

use std::io;
use std::net::SocketAddr;

use futures::FutureExt;

use crate::cluster::ledger::Slot;
use crate::connection::Frame;
use crate::http::websocket::frames::Violation;
use crate::protocol::{self, ErrorCode, ProtocolError};
use crate::telemetry::ForcedClose;

use super::Session;

/// Why a session ended.
#[derive(Debug)]
pub(super) enum End {
    Quit(String),
    Eof,
    Shutdown,
    TooSlow,
    LoginTimeout,
    /// Its guest name was registered meanwhile (on any server sharing the database).
    NameRegistered,
    /// Its account was removed, or its password changed elsewhere.
    AccountChanged,
    /// Its name, taken while the database was away, is held on another server.
    NameTaken,
    TooManyErrors,
    /// A WebSocket client broke the WebSocket protocol: closed with its close code.
    BadFrames {
        why: String,
        close_code: u16,
    },
    Io(io::Error),
}

impl End {
    /// A read failed: a WebSocket protocol violation (answered with a close frame), or the
    /// socket is gone.
    pub(super) fn on_read_error(e: io::Error) -> End {
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<Violation>())
        {
            Some(violation) => End::BadFrames {
                why: format!("bad WebSocket frames: {violation}"),
                close_code: violation.close_code(),
            },
            None => End::Io(e),
        }
    }

    /// The reason given with `BYE`; `None` when the socket is gone.
    pub(super) fn farewell(&self) -> Option<&str> {
        Some(match self {
            End::Quit(reason) => reason,
            End::Eof => "end of input",
            End::Shutdown => "server shutting down",
            End::TooSlow => "too slow",
            End::LoginTimeout => "login timeout: choose a name with NICK sooner",
            End::NameRegistered => {
                "your name has been registered by its owner: NICK <name> <password> takes it now"
            }
            End::AccountChanged => "your account was removed or its password changed: log in again",
            End::NameTaken => {
                "your name is held on another server (this one lost touch with the database): reconnect and choose a name"
            }
            End::TooManyErrors => "too many errors",
            End::BadFrames { why, .. } => why,
            End::Io(_) => return None,
        })
    }

    /// Why the server closed the connection itself, if it did (for the metrics).
    pub(super) fn forced(&self) -> Option<ForcedClose> {
        Some(match self {
            End::Shutdown => ForcedClose::Shutdown,
            End::TooSlow => ForcedClose::TooSlow,
            End::LoginTimeout => ForcedClose::LoginTimeout,
            End::NameRegistered => ForcedClose::NameRegistered,
            End::AccountChanged => ForcedClose::AccountChanged,
            End::NameTaken => ForcedClose::NameTaken,
            End::TooManyErrors => ForcedClose::TooManyErrors,
            End::Quit(_) | End::Eof | End::BadFrames { .. } | End::Io(_) => return None,
        })
    }

    /// The WebSocket close code that follows the `BYE`.
    pub(super) fn close_code(&self) -> u16 {
        use crate::http::websocket::close_code;
        match self {
            End::Shutdown => close_code::GOING_AWAY,
            End::TooSlow | End::LoginTimeout | End::TooManyErrors => close_code::POLICY,
            End::BadFrames { close_code, .. } => *close_code,
            _ => close_code::NORMAL,
        }
    }

    /// Forced closes at info, with the client's address; the ordinary ones at debug.
    pub(super) fn log(self, peer: SocketAddr) {
        match self {
            End::TooSlow => {
                tracing::info!(%peer, "closed: too slow (took no output for the stall timeout)")
            }
            End::LoginTimeout => tracing::info!(%peer, "closed: no NICK within the login timeout"),
            End::TooManyErrors => tracing::info!(%peer, "closed: too many errors"),
            End::BadFrames { why, .. } => tracing::info!(%peer, "closed: {why}"),
            End::NameRegistered => {
                tracing::info!(%peer, "closed: its guest name has been registered")
            }
            End::AccountChanged => {
                tracing::info!(%peer, "closed: its account was removed or its password changed")
            }
            End::NameTaken => {
                tracing::info!(%peer, "closed: its name is held on another server")
            }
            // A peer that stopped answering keepalive probes (or acks) vanished without a FIN.
            End::Io(e) if e.kind() == io::ErrorKind::TimedOut => {
                tracing::info!(%peer, "closed: the peer vanished (no answer to keepalive probes)")
            }
            End::Io(e) => tracing::debug!(%peer, error = %e, "closed: socket error"),
            other => tracing::debug!(%peer, reason = ?other, "closed"),
        }
    }
}

impl Session {
    /// Says `BYE <reason>` after answering everything read, then closes the socket. A client
    /// that is still sending is read (and ignored) until it closes too, within
    /// `--close-grace`: closing with unread input would send a reset, and a reset can
    /// destroy the client's copy of the last replies and the `BYE`.
    pub(super) async fn close(&mut self, end: &End) {
        let Some(reason) = end.farewell() else {
            return;
        };
        self.end_forward_replay();
        if let End::TooSlow = end {
            // What the client has not begun to take goes; owed acks still come.
            self.writer.drop_unstarted();
        }
        self.settle_acks().await;
        if let End::Shutdown = end {
            // After answering what was said before, refuse the lines already read.
            self.refuse_unread();
        }
        // Leave first, so the rooms stop queueing for us while the last lines drain.
        self.leave_everything();
        self.writer.push(protocol::line(&["BYE", reason]));
        let grace = self.hub.config.close_grace;
        let hurry = self.hub.hurry.clone();
        let Session { reader, writer, .. } = self;
        // A second stopping signal ends the grace at once.
        let _ = hurry
            .run_until_cancelled(tokio::time::timeout(grace, async {
                writer.flush().await?;
                writer.shutdown(end.close_code()).await?;
                // Linger only for a client that is still sending (a line read, or part of one):
                // an idle one is closed at once.
                let sending = matches!(reader.next().now_or_never(), Some(Some(Ok(_))));
                if sending || reader.has_partial_line() {
                    while let Some(Ok(_)) = reader.next().await {}
                }
                io::Result::Ok(())
            }))
            .await;
    }

    /// At shutdown: every complete line already read from the socket gets
    /// `ERR SHUTTING_DOWN`, so that nothing the server took in goes unanswered.
    fn refuse_unread(&mut self) {
        while let Some(Ok(frame)) = self.reader.next_buffered() {
            match &frame {
                Frame::Line(line) if line.iter().all(|b| *b == b' ') => continue,
                // Not commands: a WebSocket's ping or fragment, a long line's rest.
                Frame::Ping(_) | Frame::Skipped => continue,
                _ => {}
            }
            self.writer.push(protocol::error_line(&ProtocolError::new(
                ErrorCode::ShuttingDown,
                "the server is shutting down; this was not done",
            )));
        }
    }

    /// Leaves every room (telling the others) and gives up the nick.
    pub(super) fn leave_everything(&mut self) {
        let mut rooms = self.joined.leave_all();
        rooms.extend(self.room_being_joined().cloned());
        for room in rooms {
            self.hub.rooms.leave(&room, self.conn.id);
            if let Some(cluster) = &self.hub.cluster {
                cluster.set(self.conn.id, Slot::Room(room), None);
            }
        }
        if let Some(nick) = &self.nick {
            self.hub.nicks.release(nick, self.conn.id);
        }
        if let Some(cluster) = &self.hub.cluster {
            cluster.set(self.conn.id, Slot::Name, None);
        }
    }
}
