//! The `sni-user` command; everything lives in the library.

fn main() -> std::process::ExitCode {
    sni_user::cli::main()
}
