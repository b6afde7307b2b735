//! The command-line interface: grammar in `args`, behaviour in `dispatch`, rendering in
//! `output`, and the resolution of which daemon to talk to in `target`.

pub mod args;
pub mod audit;
pub mod bundle;
pub mod dispatch;
pub mod export;
pub mod keys;
pub mod output;
pub mod promotion;
pub mod queue;
pub mod release;
pub mod runs;
pub mod target;

pub use args::Cli;
pub use dispatch::run;
