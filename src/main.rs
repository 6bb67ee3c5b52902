fn main() -> std::process::ExitCode {
    cwo::main()
}
