//! A control store that went back in time: a database restored from a backup, or an
//! asynchronous replica promoted, has lost changes the proxies applied (README, "Restoring a
//! control store").

use crate::state::AppState;

/// Why the store's state (`epoch`, `rev`) is older than what this proxy has applied, if
/// it is: another database, or a revision lower than this proxy's. Never before the
/// first load (a proxy that starts adopts whatever the store holds).
pub(super) fn regression(
    state: &AppState,
    known: Option<&str>,
    floor: i64,
    epoch: &str,
    rev: i64,
) -> Option<String> {
    if !state.fleet.is_loaded() {
        if rev < floor {
            // Loaded anyway (a proxy must serve something), but said, and no change is
            // written until an operator moves the revision on.
            let why = format!(
                "the store's revision is {rev}, older than the {} live proxies have applied",
                floor
            );
            state.fleet.set_regressed(Some(why.clone()));
            tracing::error!(reason = %why, "the control store went back in time (restored from a backup? a replica promoted?): its state is loaded, changes are refused; see the README's recovery steps");
        }
        return None;
    }
    let mine = state.fleet.rev().max(floor);
    match known {
        // Another database: until an operator moves its revision past this proxy's.
        Some(e) if e != epoch && rev <= mine => Some(format!(
            "the store is another database (epoch {} instead of {}; revision {rev}, {mine} applied here)",
            crate::api::printable(epoch),
            crate::api::printable(e)
        )),
        _ if rev < mine => Some(format!(
            "the store's revision is {rev}, older than the {mine} applied here"
        )),
        _ => None,
    }
}
