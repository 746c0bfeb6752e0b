//! `fencelock backends`: what this build can talk to, and what each backend promises.

use std::process::ExitCode;

use fencelock::schemes::SCHEMES;

/// Prints every known scheme, whether it is compiled in, and its guarantees.
pub async fn backends() -> ExitCode {
    for s in SCHEMES {
        let status = match (s.compiled, s.feature) {
            (true, _) => "compiled in".to_owned(),
            (false, Some(f)) => format!("not in this build (Cargo feature `{f}`)"),
            (false, None) => "not available on this platform".to_owned(),
        };
        println!("{}  [{status}]", s.form);
        println!("    {}", s.summary);
        if let Some(g) = fencelock::schemes::guarantees(s.names[0]) {
            for line in g.to_string().lines() {
                println!("    {}", line.trim_start());
            }
        }
        println!();
    }
    ExitCode::SUCCESS
}
