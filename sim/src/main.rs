//! ferry-sim: replays `scenarios/*.ron` against ferry under turmoil.
//!
//! Not built yet: the simulator arrives with the migration work. This binary
//! exists so the workspace has its final shape from the first day.

fn main() {
    eprintln!("ferry-sim: the simulator is not implemented yet");
    std::process::exit(2);
}
