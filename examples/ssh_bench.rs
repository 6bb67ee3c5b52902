//! Runs N small commands over one cwo SSH connection and prints the wall time in ms.
//! Used by scripts/bench.sh: `ssh_bench USER@HOST:PORT KEY N`.

use std::time::{Duration, Instant};

use cwo::config::HostAddr;
use cwo::transport::ssh::{SshTarget, SshTransport};
use cwo::transport::{ExecRequest, Transport};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, key, n] = args.as_slice() else {
        eprintln!("usage: ssh_bench USER@HOST:PORT KEY N");
        std::process::exit(2);
    };
    let addr = HostAddr::parse(addr).expect("an address");
    let n: usize = n.parse().expect("a count");
    let target = SshTarget {
        host: addr.host.clone(),
        port: addr.port,
        user: addr.user.clone(),
        key_path: key.into(),
        host_key: None,
        connect_timeout: Duration::from_secs(20),
        keepalive: Duration::from_secs(15),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let t = SshTransport::new("bench", addr.to_string(), target, None);
        let started = Instant::now();
        for i in 0..n {
            let out = t
                .check(ExecRequest::new(["echo", &i.to_string()]))
                .await
                .expect("command ran");
            assert_eq!(out.trim(), i.to_string());
        }
        println!("{}", started.elapsed().as_millis());
        t.close().await;
    });
}
