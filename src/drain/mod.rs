//! Draining: the pure state machine (`machine`), deadline enforcement (`enforce`), and the
//! status view the admin API and CLI read (`view`).

pub mod enforce;
pub mod machine;
pub mod view;
