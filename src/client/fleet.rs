//! The fleet's part of a drain answer, as the CLI prints it (drain and node drain).

/// One line per other proxy of the fleet; lost ones say so (they are not counted).
pub(super) fn fleet_lines(f: &crate::api::FleetDrain) -> String {
    use crate::api::printable;
    let mut out = String::new();
    for p in &f.proxies {
        let what = if p.lost {
            format!(
                "LOST (heartbeat {:.1}s ago; not counted; last held {})",
                p.heartbeat_age_seconds,
                p.in_flight.words(", ")
            )
        } else if !p.applied {
            "has not applied the drain yet".to_string()
        } else {
            p.in_flight.words(", ")
        };
        out.push_str(&format!("  proxy {}: {what}\n", printable(&p.node)));
    }
    if f.store_unreachable {
        out.push_str("  control store unreachable: the other proxies' counts are not known\n");
    }
    if f.stale {
        out.push_str("  this proxy's view of the fleet is older than the heartbeat TTL: the other proxies' counts are not known\n");
    }
    if !f.lost.is_empty() && f.strict {
        out.push_str(&format!(
            "  {} lost: not drained while a proxy is lost (--strict)\n",
            printable(&f.lost.join(", "))
        ));
    } else if !f.lost.is_empty() {
        out.push_str(&format!(
            "  warning: {} lost; drained means drained on the live proxies (--strict: never drained while a proxy is lost)\n",
            printable(&f.lost.join(", "))
        ));
    }
    out
}
