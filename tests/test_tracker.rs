//! A hostile `.juggle/balls.jsonl`: what cwo skips is a warning naming its line, and every line cwo
//! does not own stays byte for byte.

use crate::common::TestEnv;

fn ball(id: &str, extra: &str) -> String {
    format!(r#"{{"id":"{id}","title":"do {id}","priority":"high","state":"pending"{extra}}}"#)
}

/// The file, CRLF throughout, and the `balls.jsonl:N: …` start of the warning each bad line gets.
fn hostile() -> (Vec<Vec<u8>>, Vec<(usize, &'static str)>) {
    let lines: Vec<Vec<u8>> = vec![
        format!("\u{feff}{}", ball("proj-0000000b", "")).into_bytes(),
        ball("proj-00000001", "").into_bytes(),
        b"\xff\xfe".to_vec(),
        b"not json".to_vec(),
        ball("proj-00000001", r#","title":"the copy""#).into_bytes(),
        ball("../escape", "").into_bytes(),
        ball("proj-5e1f", r#","depends_on":["proj-5e1f"]"#).into_bytes(),
        ball("proj-7790", r#","depends_on":["proj-nowhere"]"#).into_bytes(),
        ball("proj-a", r#","depends_on":["proj-b"]"#).into_bytes(),
        ball("proj-b", r#","depends_on":["proj-a"]"#).into_bytes(),
    ];
    let lines = lines
        .into_iter()
        .map(|mut l| {
            l.extend_from_slice(b"\r");
            l
        })
        .chain([Vec::new()])
        .collect();
    let problems = vec![
        (
            1,
            "the line starts with a UTF-8 byte order mark (an editor's, usually): cwo reads",
        ),
        (3, "skipped: not valid UTF-8 (byte 0xff at column 1)"),
        (4, "skipped: not JSON"),
        (
            5,
            "skipped: a second ball with id `proj-00000001` (the first is on line 2)",
        ),
        (6, "skipped, never run: ball id \"../escape\""),
        (7, "ball `proj-5e1f` depends on itself"),
        (8, "ball `proj-7790` depends on `proj-nowhere`"),
        (
            9,
            "balls `proj-a` and `proj-b` (lines 9, 10) depend on each other in a cycle",
        ),
    ];
    (lines, problems)
}

fn write(env: &TestEnv, lines: &[Vec<u8>]) {
    std::fs::create_dir_all(env.project.join(".juggle")).unwrap();
    std::fs::write(env.balls_path(), lines.join(&b'\n')).unwrap();
}

fn read(env: &TestEnv) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(env.balls_path()).unwrap();
    bytes.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect()
}

#[test]
fn task_list_and_doctor_name_each_bad_line_and_leave_the_file_alone() {
    let env = TestEnv::new();
    let (lines, problems) = hostile();
    write(&env, &lines);
    let path = env
        .project
        .canonicalize()
        .unwrap()
        .join(".juggle/balls.jsonl");

    let list = env.cwo(&["task", "list"]).ok();
    for (line, text) in &problems {
        let warning = format!("warning: {}:{line}: {text}", path.display());
        assert_eq!(
            list.stderr.matches(&warning).count(),
            1,
            "{warning}\n{}",
            list.stderr
        );
    }
    let shown: Vec<&str> = list
        .stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        shown,
        [
            "proj-0000000b",
            "proj-00000001",
            "proj-5e1f",
            "proj-7790",
            "proj-a",
            "proj-b"
        ]
    );
    assert!(
        list.stdout.contains("do proj-00000001"),
        "the first copy wins"
    );

    let json = env.cwo(&["task", "list", "--format", "json"]).ok().json();
    let lines_in_json: Vec<u64> = json["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines_in_json, [1, 3, 4, 5, 6, 7, 8, 9]);

    env.settings("[agent]\ncommand = [\"sh\"]");
    let doctor = env.cwo(&["doctor", "--format", "json"]).json();
    let tracker: Vec<&serde_json::Value> = doctor["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] == "tracker")
        .collect();
    assert_eq!(tracker.len(), 1 + problems.len(), "{doctor:#}");
    assert!(tracker.iter().all(|c| c["status"] == "warn"), "{doctor:#}");
    for (check, (line, text)) in tracker[1..].iter().zip(&problems) {
        let detail = check["detail"].as_str().unwrap();
        assert!(
            detail.starts_with(&format!("{}:{line}: {text}", path.display())),
            "{detail}"
        );
    }
    let human = env.cwo(&["doctor"]);
    assert!(
        human.stdout.contains("warn tracker") && !human.stderr.contains("warning:"),
        "doctor shows the problems as checks, not as warnings too:\n{}\n{}",
        human.stdout,
        human.stderr
    );

    assert_eq!(read(&env), lines, "reading changes nothing");
}

#[test]
fn run_once_runs_the_usable_balls_warns_once_each_and_keeps_foreign_lines() {
    let env = TestEnv::new();
    env.agent(r#"echo "BLOCKED: stop here""#, "");
    let (lines, problems) = hostile();
    write(&env, &lines);
    let path = env
        .project
        .canonicalize()
        .unwrap()
        .join(".juggle/balls.jsonl");

    let run = env.cwo(&["run", "--once"]).ok();
    for (line, text) in &problems {
        let warning = format!("warning: {}:{line}: {text}", path.display());
        assert_eq!(
            run.stderr.matches(&warning).count(),
            1,
            "once per run, not once per poll: {warning}\n{}",
            run.stderr
        );
    }
    assert!(
        run.stderr.contains("ran 3 task(s): 0 complete, 3 blocked"),
        "{}",
        run.stderr
    );
    assert_eq!(
        env.journal("SELECT DISTINCT ball_id FROM attempts ORDER BY ball_id"),
        "proj-00000001\nproj-0000000b\nproj-7790"
    );
    // Nothing was made from the `../escape` id, inside the state dir or beside it.
    let mut stack = vec![env.tmp.path().to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            assert!(!name.contains("escape"), "{}", entry.path().display());
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            }
        }
    }

    let after = read(&env);
    assert_eq!(after.len(), lines.len());
    for (i, (a, b)) in after.iter().zip(&lines).enumerate() {
        if i == 0 || i == 1 || i == 7 {
            let text = String::from_utf8(a.clone()).unwrap();
            assert!(
                text.contains(r#""state":"blocked""#)
                    && text.ends_with("}\r")
                    && text.starts_with('\u{feff}') == (i == 0),
                "line {} is rewritten and keeps its CRLF (and its byte order mark): {text:?}",
                i + 1
            );
        } else {
            assert_eq!(a, b, "line {} is kept byte for byte", i + 1);
        }
    }
}
