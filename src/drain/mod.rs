//! Draining, the pure part: the state machine of one pool's or backend's drain (phases,
//! deadlines, spread of forced ends), with `now` passed in. The live cells are in
//! `state::drain_cell`; the drain service is `services::drains`.

pub mod machine;
