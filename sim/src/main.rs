//! ferry-sim: replays `scenarios/*.ron` against ferry under turmoil.

fn main() {
    eprintln!("ferry-sim: not wired yet");
    std::process::exit(2);
}
