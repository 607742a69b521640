//! The `sni-user` command; everything lives in the library.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    sni_user::cli::main()
}
