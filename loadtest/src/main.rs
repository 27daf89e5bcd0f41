//! `loadtest`: the open-loop load generator (issue 9). Not built yet: this
//! binary only says so, so nobody mistakes it for a working tool.

fn main() {
    eprintln!("loadtest: not implemented yet (see docs/architecture.md, \"Not built yet\")");
    std::process::exit(2);
}
