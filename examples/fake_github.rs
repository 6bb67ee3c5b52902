//! The test suite's fake GitHub as a program, for scripts/bench.sh and for trying cwo's GitHub
//! integration without an account:
//! `fake_github TOKEN LOGIN OWNER/REPO SEED_REPO [N_ISSUES [LABEL]]`.
//! Makes OWNER/REPO from SEED_REPO's HEAD, opens N_ISSUES issues labelled LABEL (default "cwo"),
//! prints the API URL and then the git URL (one a line), then serves until killed.

#[path = "../tests/common/fake_github.rs"]
mod fake_github;

use std::io::Write;
use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        eprintln!("usage: fake_github TOKEN LOGIN OWNER/REPO SEED_REPO [N_ISSUES [LABEL]]");
        std::process::exit(2);
    }
    let Some((owner, repo)) = args[2].split_once('/') else {
        eprintln!("fake_github: {:?} is not OWNER/REPO", args[2]);
        std::process::exit(2);
    };
    let fake = fake_github::FakeGithub::start(&args[0], &args[1]);
    fake.create_repo(owner, repo, Path::new(&args[3]));
    let n: u64 = match args.get(4).map(|n| n.parse()) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("fake_github: N_ISSUES {:?}: {e}", args[4]);
            std::process::exit(2);
        }
    };
    let label = args.get(5).map(String::as_str).unwrap_or("cwo");
    for i in 1..=n {
        fake.add_issue(&format!("Task {i}"), &format!("Do task {i}."), &[label]);
    }
    println!("{}", fake.api_url());
    println!("{}", fake.git_url(owner, repo));
    std::io::stdout().flush().unwrap();
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
