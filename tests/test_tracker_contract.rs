//! One set of behaviours every tracker keeps (run against each fixture in
//! `tests/common/trackers.rs`), then what is particular to frontloop's task files.

use std::path::Path;
use std::sync::{Arc, Mutex};

use cwo::tracker::frontloop::Frontloop;
use cwo::tracker::{Priority, Task, Tracker, TrackerError};

use crate::common::trackers::{
    FrontloopFixture, GithubFixture, JuggleFixture, TaskSpec, TrackerFixture, fl_task,
};

fn fixtures() -> Vec<Box<dyn TrackerFixture>> {
    vec![
        Box::new(JuggleFixture::new()),
        Box::new(FrontloopFixture::new()),
        Box::new(GithubFixture::new()),
    ]
}

fn ids(tasks: &[Task]) -> Vec<String> {
    tasks.iter().map(|t| t.id.clone()).collect()
}

fn task(t: &dyn Tracker, id: &str) -> Task {
    t.list()
        .unwrap()
        .into_iter()
        .find(|t| t.id == id)
        .unwrap_or_else(|| panic!("no task {id} in list()"))
}

#[test]
fn ready_is_in_priority_then_insertion_order_with_title_criteria_and_context() {
    for f in fixtures() {
        let low = f.add(&TaskSpec::new("Low one", Priority::Low));
        let high = f.add(&TaskSpec::new("High one", Priority::High));
        let medium = f.add(&TaskSpec::new("Medium one", Priority::Medium));
        let urgent = f.add(&TaskSpec::new("Urgent one", Priority::Urgent));
        let high2 = f.add(&TaskSpec::new("High two", Priority::High));
        let t = f.tracker();
        let ready = t.ready().unwrap();
        assert_eq!(
            ids(&ready),
            [
                urgent.as_str(),
                high.as_str(),
                high2.as_str(),
                medium.as_str(),
                low.as_str()
            ],
            "{}",
            f.name()
        );
        let h = &ready[1];
        assert_eq!(h.title, "High one", "{}", f.name());
        assert_eq!(h.priority, Priority::High, "{}", f.name());
        assert_eq!(h.state, "pending", "{}", f.name());
        assert_eq!(
            h.acceptance_criteria,
            ["High one works", "the tests pass"],
            "{}",
            f.name()
        );
        assert!(
            h.context.contains("Why High one matters."),
            "{}: {:?}",
            f.name(),
            h.context
        );
        assert!(t.problems().unwrap().is_empty(), "{}", f.name());
    }
}

#[test]
fn a_claimed_task_is_in_progress_first_in_ready_and_wanted() {
    for f in fixtures() {
        let high = f.add(&TaskSpec::new("High one", Priority::High));
        let low = f.add(&TaskSpec::new("Low one", Priority::Low));
        let t = f.tracker();
        t.claim(&low, "worker-1").unwrap();
        let ready = t.ready().unwrap();
        assert_eq!(ids(&ready), [low.as_str(), high.as_str()], "{}", f.name());
        assert_eq!(ready[0].state, "in_progress", "{}", f.name());
        assert!(t.wanted(&low).unwrap(), "{}", f.name());
        assert_eq!(task(t.as_ref(), &low).state, "in_progress", "{}", f.name());
    }
}

#[test]
fn complete_takes_the_task_out_of_ready_and_records_the_note() {
    for f in fixtures() {
        let a = f.add(&TaskSpec::new("Task a", Priority::Medium));
        let b = f.add(&TaskSpec::new("Task b", Priority::Medium));
        let t = f.tracker();
        t.claim(&a, "worker-1").unwrap();
        t.complete(&a, "merged as cwo/a at 0123abc").unwrap();
        assert_eq!(ids(&t.ready().unwrap()), [b.as_str()], "{}", f.name());
        assert_eq!(task(t.as_ref(), &a).state, "complete", "{}", f.name());
        assert!(
            f.record(&a).contains("merged as cwo/a at 0123abc"),
            "{}: {}",
            f.name(),
            f.record(&a)
        );
    }
}

#[test]
fn block_takes_the_task_out_of_ready_and_records_the_reason() {
    for f in fixtures() {
        let a = f.add(&TaskSpec::new("Task a", Priority::Urgent));
        let b = f.add(&TaskSpec::new("Task b", Priority::Low));
        let t = f.tracker();
        t.claim(&a, "worker-1").unwrap();
        t.block(&a, "needs the staging credentials").unwrap();
        assert_eq!(ids(&t.ready().unwrap()), [b.as_str()], "{}", f.name());
        let blocked = task(t.as_ref(), &a);
        assert_eq!(
            blocked.blocked_reason,
            "needs the staging credentials",
            "{}",
            f.name()
        );
        assert!(
            !matches!(blocked.state.as_str(), "pending" | "in_progress"),
            "{}: {}",
            f.name(),
            blocked.state
        );
        assert!(
            f.record(&a).contains("needs the staging credentials"),
            "{}",
            f.name()
        );
    }
}

#[test]
fn release_makes_a_claimed_task_pending_again_in_its_priority_place() {
    for f in fixtures() {
        let high = f.add(&TaskSpec::new("High one", Priority::High));
        let low = f.add(&TaskSpec::new("Low one", Priority::Low));
        let t = f.tracker();
        t.claim(&low, "worker-1").unwrap();
        t.release(&low).unwrap();
        let ready = t.ready().unwrap();
        assert_eq!(ids(&ready), [high.as_str(), low.as_str()], "{}", f.name());
        assert_eq!(ready[1].state, "pending", "{}", f.name());
        // And it can be claimed again.
        t.claim(&low, "worker-2").unwrap();
        assert_eq!(
            ids(&t.ready().unwrap()),
            [low.as_str(), high.as_str()],
            "{}",
            f.name()
        );
    }
}

#[test]
fn a_second_controller_cannot_take_a_claimed_task_from_its_worker() {
    for f in fixtures() {
        let a = f.add(&TaskSpec::new("Task a", Priority::Medium));
        let (first, second) = (f.tracker(), f.tracker());
        first.claim(&a, "worker-1").unwrap();
        let again = second.claim(&a, "worker-2");
        if f.exclusive_claims() {
            match again {
                Err(TrackerError::Taken { id, by }) => {
                    assert_eq!(id, a, "{}", f.name());
                    // The holder's worker, and where it runs if the tracker knows.
                    assert!(by.contains("worker-1"), "{}: {by}", f.name());
                }
                other => panic!("{}: the second claim gave {other:?}", f.name()),
            }
        } else {
            again.unwrap();
        }
        let tasks = first.list().unwrap();
        assert_eq!(
            tasks.iter().filter(|t| t.id == a).count(),
            1,
            "{}: the task is listed once",
            f.name()
        );
        assert_eq!(
            task(first.as_ref(), &a).state,
            "in_progress",
            "{}",
            f.name()
        );
    }
}

#[test]
fn an_unreadable_entry_is_a_problem_with_its_place_not_a_failure() {
    for f in fixtures() {
        let a = f.add(&TaskSpec::new("Task a", Priority::Medium));
        let Some(file) = f.add_unreadable() else {
            // Skipped: the store has no entry the tracker could fail to read (GitHub: issues are
            // JSON the API writes, and every field the tracker reads has a fallback; its
            // problems() is checked empty in the first test).
            continue;
        };
        let b = f.add(&TaskSpec::new("Task b", Priority::Medium));
        let t = f.tracker();
        assert_eq!(
            ids(&t.ready().unwrap()),
            [a.as_str(), b.as_str()],
            "{}",
            f.name()
        );
        let problems = t.problems().unwrap();
        assert_eq!(problems.len(), 1, "{}: {problems:?}", f.name());
        assert!(
            problems[0].path.ends_with(&file) && problems[0].line >= 1,
            "{}: {}",
            f.name(),
            problems[0]
        );
        assert!(problems[0].message.contains("skipped"), "{}", f.name());
    }
}

#[test]
fn unknown_and_unusable_ids_are_errors_that_change_nothing() {
    for f in fixtures() {
        let a = f.add(&TaskSpec::new("Task a", Priority::Medium));
        let before = f.record(&a);
        let t = f.tracker();
        assert!(
            matches!(t.claim("no-such-task", "w"), Err(TrackerError::NotFound(_))),
            "{}",
            f.name()
        );
        let missing = t.claim(&f.missing_id(), "w");
        assert!(
            matches!(missing, Err(TrackerError::NotFound(_))),
            "{}: {missing:?}",
            f.name()
        );
        let escape = t.complete("../escape", "x");
        assert!(
            matches!(escape, Err(TrackerError::Invalid(_))),
            "{}: {escape:?}",
            f.name()
        );
        assert_eq!(f.record(&a), before, "{}", f.name());
    }
}

// ---- frontloop ----

fn write(path: &Path, text: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn fl(root: &Path, epic: &str) -> Frontloop {
    Frontloop::new(root.to_path_buf(), epic.to_string())
}

/// Every file under `dir`, relative to it, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn unknown_front_matter_and_the_body_survive_every_move_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join(".frontloop");
    let original: &[u8] = b"---\r\n# fl writes these\r\ntitle: 'Keep \"me\"'   \r\nowner: ana\r\n\
        tags:\r\n  - auth\r\n  - {odd: [yaml]}\r\nestimate: |\r\n  two days\r\n\r\n\
        priority: high\r\nx-custom: \"\\u00e9\"\r\n---\r\n\r\n## Goal\r\n\r\nLog in.\r\n\r\n\
        ## Acceptance Criteria\r\n\r\n- [ ] it works\r\n\r\n## Implementation Notes\r\n\r\n\
        trailing spaces   \r\n\t tabs\r\n\xc3\xa9t\xc3\xa9";
    write(&root.join("auth/ready/2500-login.md"), original);
    let t = fl(&root, "");
    let id = "auth.login";
    let listed = task(&t, id);
    assert_eq!(listed.title, "Keep \"me\"");
    assert_eq!(listed.acceptance_criteria, ["it works"]);
    let steps: [(&str, &dyn Fn(), &str); 4] = [
        ("claim", &|| t.claim(id, "w-1").unwrap(), "in_progress"),
        ("release", &|| t.release(id).unwrap(), "ready"),
        ("block", &|| t.block(id, "two\nlines").unwrap(), "clarify"),
        ("complete", &|| t.complete(id, "merged").unwrap(), "done"),
    ];
    let mut previous = original.to_vec();
    for (what, step, dir) in steps {
        step();
        assert_eq!(
            files(&root),
            [format!("auth/{dir}/2500-login.md")],
            "after {what}: one file, its name kept"
        );
        let now = std::fs::read(root.join(format!("auth/{dir}/2500-login.md"))).unwrap();
        assert!(
            now.starts_with(&previous),
            "after {what} the earlier bytes changed:\n{}",
            String::from_utf8_lossy(&now)
        );
        let added = String::from_utf8(now[previous.len()..].to_vec()).unwrap();
        assert!(
            added.contains("\r\n> cwo: ") && !added.replace("\r\n", "").contains('\n'),
            "after {what}: a CRLF note, got {added:?}"
        );
        previous = now;
    }
    let text = String::from_utf8(previous).unwrap();
    assert!(
        text.contains("\r\n\r\n> cwo: claimed by w-1 at 20"),
        "{text}"
    );
    assert!(text.contains("\r\n> cwo: blocked at 20") && text.contains(": two\r\n> lines\r\n"));
    assert!(text.ends_with(": merged\r\n"), "{text}");
    assert!(t.problems().unwrap().is_empty());
}

#[test]
fn the_legacy_flat_layout_is_the_default_epic() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join(".frontloop");
    let spec = TaskSpec::new("Old style", Priority::Low);
    write(
        &root.join("ready/4-old-style.md"),
        fl_task(&spec).as_bytes(),
    );
    let spec = TaskSpec::new("Older style", Priority::Urgent);
    write(
        &root.join("ready/1-older-style.md"),
        fl_task(&spec).as_bytes(),
    );
    let t = fl(&root, "");
    assert_eq!(ids(&t.ready().unwrap()), ["older-style", "old-style"]);
    t.claim("old-style", "w").unwrap();
    assert!(root.join("in_progress/4-old-style.md").is_file());
    assert_eq!(
        ids(&fl(&root, "default").ready().unwrap()),
        ["old-style", "older-style"]
    );
}

#[test]
fn the_epic_setting_limits_the_tasks_and_archived_epics_are_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join(".frontloop");
    let put = |path: &str, title: &str, p: Priority| {
        write(
            &root.join(path),
            fl_task(&TaskSpec::new(title, p)).as_bytes(),
        );
    };
    put("default/ready/5000-tidy.md", "Tidy", Priority::Medium);
    put("auth/ready/2500-login.md", "Login", Priority::High);
    put("auth/clarify/oauth.md", "Oauth", Priority::High);
    put(
        "billing/done/0001-invoices.md",
        "Invoices",
        Priority::Urgent,
    );
    put(
        "_archive/2026-01-01-old/ready/0001-legacy.md",
        "Legacy",
        Priority::Urgent,
    );
    write(&root.join("_archive/2026-01-01-old/ready/junk.md"), b"junk");
    write(&root.join("notes/README.md"), b"not an epic");
    write(&root.join("auth/ready/.5000-draft.md.swp"), b"an editor's");
    write(&root.join("auth/ready/README.txt"), b"not a task");
    let all = fl(&root, "");
    assert_eq!(
        ids(&all.list().unwrap()),
        ["auth.oauth", "auth.login", "billing.invoices", "tidy"]
    );
    assert_eq!(ids(&all.ready().unwrap()), ["auth.login", "tidy"]);
    assert_eq!(task(&all, "auth.oauth").state, "clarify");
    assert_eq!(task(&all, "billing.invoices").state, "complete");
    assert!(all.problems().unwrap().is_empty(), "{:?}", all.problems());
    let auth = fl(&root, "auth");
    assert_eq!(ids(&auth.list().unwrap()), ["auth.oauth", "auth.login"]);
    assert!(matches!(
        auth.claim("tidy", "w"),
        Err(TrackerError::NotFound(_))
    ));
    assert_eq!(ids(&fl(&root, "default").list().unwrap()), ["tidy"]);
    assert!(fl(&root, "nope").list().unwrap().is_empty());
    assert!(
        fl(&tmp.path().join("missing"), "")
            .list()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_task_moved_or_deleted_by_another_process_is_taken_or_gone_and_no_longer_wanted() {
    let f = FrontloopFixture::new();
    let a = f.add(&TaskSpec::new("Task a", Priority::Medium));
    let b = f.add(&TaskSpec::new("Task b", Priority::Medium));
    let t = f.tracker();
    let ready = f.root().join("default/ready");
    // `fl` (or a person) moves a to in_progress without a claim note.
    let file_a = FrontloopFixture::find(&f.root().join("default"), &a).unwrap();
    let name = file_a.file_name().unwrap().to_owned();
    std::fs::rename(&file_a, f.root().join("default/in_progress").join(&name)).unwrap();
    match t.claim(&a, "w-1") {
        Err(TrackerError::Taken { id, by }) => {
            assert_eq!((id.as_str(), by.as_str()), (a.as_str(), "another process"))
        }
        other => panic!("{other:?}"),
    }
    std::fs::remove_file(FrontloopFixture::find(&f.root().join("default"), &b).unwrap()).unwrap();
    assert!(matches!(t.claim(&b, "w-1"), Err(TrackerError::NotFound(_))));
    assert!(!t.wanted(&b).unwrap(), "a deleted task is not wanted");
    // A claim by the same worker again (a controller that adopted its worker) changes nothing.
    let c = f.add(&TaskSpec::new("Task c", Priority::Low));
    t.claim(&c, "w-2").unwrap();
    let before = f.record(&c);
    t.claim(&c, "w-2").unwrap();
    assert_eq!(f.record(&c), before);
    assert!(t.wanted(&c).unwrap());
    // A person moves the running task back to clarify: it is no longer wanted.
    let file_c = FrontloopFixture::find(&f.root().join("default"), &c).unwrap();
    let name = file_c.file_name().unwrap().to_owned();
    std::fs::rename(&file_c, f.root().join("default/clarify").join(&name)).unwrap();
    assert!(!t.wanted(&c).unwrap());
    assert!(std::fs::read_dir(&ready).unwrap().next().is_none());
}

#[test]
fn a_blocked_task_waits_in_clarify_until_a_person_moves_it_back() {
    let f = FrontloopFixture::new();
    let a = f.add(&TaskSpec::new("Task a", Priority::High));
    let t = f.tracker();
    t.claim(&a, "w").unwrap();
    t.block(&a, "which API version?").unwrap();
    let blocked = task(t.as_ref(), &a);
    assert_eq!(
        (blocked.state.as_str(), blocked.blocked_reason.as_str()),
        ("clarify", "which API version?")
    );
    assert!(t.ready().unwrap().is_empty());
    assert!(matches!(t.claim(&a, "w"), Err(TrackerError::Taken { .. })));
    let file = FrontloopFixture::find(&f.root().join("default"), &a).unwrap();
    assert!(file.starts_with(f.root().join("default/clarify")));
    let name = file.file_name().unwrap().to_owned();
    std::fs::rename(&file, f.root().join("default/ready").join(&name)).unwrap();
    let again = &t.ready().unwrap()[0];
    assert_eq!(
        (again.id.as_str(), again.blocked_reason.as_str()),
        (a.as_str(), "")
    );
}

#[test]
fn copies_of_one_task_count_once_and_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join(".frontloop/default");
    let text = fl_task(&TaskSpec::new("Dup", Priority::Medium));
    // One id in two states (a crash or a merge): the one further along counts.
    write(&root.join("ready/5000-moved.md"), text.as_bytes());
    write(&root.join("done/5000-moved.md"), text.as_bytes());
    // One id twice in one state: neither runs.
    write(&root.join("ready/5000-twice.md"), text.as_bytes());
    write(&root.join("ready/2500-twice.md"), text.as_bytes());
    write(&root.join("ready/5001-fine.md"), text.as_bytes());
    let t = fl(&tmp.path().join(".frontloop"), "");
    assert_eq!(ids(&t.list().unwrap()), ["fine", "moved"]);
    assert_eq!(task(&t, "moved").state, "complete");
    let problems: Vec<String> = t
        .problems()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{}:{}: {}",
                p.path.strip_prefix(&root).unwrap().display(),
                p.line,
                p.message
            )
        })
        .collect();
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(
        problems[0].starts_with(
            "ready/2500-twice.md:1: skipped, never run: 2 files have the task id `twice`"
        ),
        "{problems:?}"
    );
    assert!(
        problems[1].starts_with("ready/5000-moved.md:1: skipped: a second copy of task `moved`;")
            && problems[1].contains("done/5000-moved.md is further along"),
        "{problems:?}"
    );
    assert!(problems[2].starts_with("ready/5000-twice.md:1: skipped, never run"));
    assert!(matches!(
        t.claim("twice", "w"),
        Err(TrackerError::NotFound(_))
    ));
}

#[test]
fn files_that_are_not_tasks_are_problems_with_their_line_reported_once() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join(".frontloop");
    let good = fl_task(&TaskSpec::new("Good", Priority::Low));
    write(&root.join("default/ready/7500-good.md"), good.as_bytes());
    write(
        &root.join("default/ready/5000-bad-priority.md"),
        b"---\ntitle: x\npriority: urgent\n---\n",
    );
    write(
        &root.join("default/ready/5000-bad name.md"),
        good.as_bytes(),
    );
    write(
        &root.join("default/ready/5000-latin1.md"),
        b"---\ntitle: caf\xe9\n",
    );
    write(
        &root.join("default/ready/5000-no-criteria.md"),
        b"---\ntitle: x\npriority: low\n---\n## Goal\nno criteria\n",
    );
    let heard = Arc::new(Mutex::new(Vec::new()));
    let sink = heard.clone();
    let t = fl(&root, "").on_problem(Arc::new(move |p| sink.lock().unwrap().push(p.to_string())));
    for _ in 0..3 {
        assert_eq!(ids(&t.ready().unwrap()), ["no-criteria", "good"]);
    }
    let heard = heard.lock().unwrap().clone();
    let tail = |s: &String| {
        s.rsplit_once("/default/ready/")
            .map(|(_, t)| t.to_string())
            .unwrap()
    };
    let heard: Vec<String> = heard.iter().map(tail).collect();
    assert_eq!(heard.len(), 4, "{heard:?}");
    assert!(heard[0].starts_with("5000-bad name.md:1: skipped, never run: task id \"bad name\""));
    assert!(heard[1].starts_with(
        "5000-bad-priority.md:3: skipped: priority `urgent` is not one of critical, high, medium, low"
    ));
    assert!(heard[2].starts_with("5000-latin1.md:2: skipped: not valid UTF-8 (byte 0xe9)"));
    assert!(heard[3].starts_with("5000-no-criteria.md:5: no `## Acceptance Criteria` section"));
    assert_eq!(t.problems().unwrap().len(), 4);
}

#[test]
fn cwo_run_works_a_frontloop_queue_and_notes_each_outcome_once() {
    let env = crate::common::TestEnv::new();
    env.agent_with(
        "[tracker]\nkind = \"frontloop\"",
        "echo hello > greeting.txt\ngit add greeting.txt\ngit commit -q -m greet",
        "",
    );
    let root = env.project.join(".frontloop");
    write(
        &root.join("web/ready/10-greet.md"),
        fl_task(&TaskSpec::new("Greet", Priority::High)).as_bytes(),
    );
    let run = env.cwo(&["run", "--once"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let done = std::fs::read_to_string(root.join("web/done/10-greet.md")).unwrap();
    assert_eq!(done.matches("branch cwo/web.greet").count(), 1, "{done}");
    assert!(done.starts_with(&fl_task(&TaskSpec::new("Greet", Priority::High))));
    assert!(!root.join("web/ready/10-greet.md").exists());
}
