//! Notifications from the control store (LISTEN), received in a task of their own, and what
//! their payloads announce.

use sqlx::postgres::PgListener;
use tokio::sync::mpsc;

/// Notifications: their revisions, `None` when the connection is lost; and their task.
pub type Notes = (mpsc::Receiver<Option<i64>>, tokio::task::JoinHandle<()>);

/// Receive notifications in a task of their own (the receive is not cancel-safe, a
/// channel is).
pub(super) fn receive(mut l: PgListener) -> Notes {
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(async move {
        loop {
            let rev = match l.try_recv().await {
                Ok(Some(n)) => note_rev(n.payload()),
                _ => {
                    let _ = tx.send(None).await;
                    return;
                }
            };
            if tx.send(Some(rev)).await.is_err() {
                return;
            }
        }
    });
    (rx, task)
}

/// The revision a notification announces (`REV NODE`); one that does not parse (written by
/// hand, or by another version) announces "read everything again" ([`i64::MAX`]), never
/// "nothing new".
pub fn note_rev(payload: &str) -> i64 {
    payload
        .split(' ')
        .next()
        .and_then(|r| r.parse::<i64>().ok())
        .filter(|r| *r >= 0)
        .unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::note_rev;

    #[test]
    fn a_notification_that_does_not_parse_means_read_everything() {
        assert_eq!(note_rev("42 node-a"), 42);
        assert_eq!(note_rev("7"), 7);
        for bad in [
            "",
            " 42",
            "x",
            "42x node",
            "-1 node",
            "99999999999999999999",
            "\u{0}",
        ] {
            assert_eq!(note_rev(bad), i64::MAX, "{bad:?}");
        }
    }
}
