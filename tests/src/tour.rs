//! The documentation's tours, run as tests: the fenced blocks of a Markdown file whose info
//! string is `sh tour` are steps, run one after another in one `bash`, so that variables and
//! background jobs carry from step to step, as they do in the reader's shell.
//!
//! A step is a line (or lines joined by a trailing `\`). Its trailing comment may say what it
//! prints:
//!
//! - `# → TEXT`: the step runs once, exits 0, and its output (stdout and stderr) contains TEXT;
//! - `# eventually → TEXT`: the step is run again (a poll, every half second) until its output
//!   contains TEXT, for up to [`EVENTUALLY`];
//!
//! TEXT may list several pieces separated by ` ... `: each must be in the output. Any other step
//! must exit 0 within [`STEP_LIMIT`]. A failing step names its file and line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a step that runs once may take.
pub const STEP_LIMIT: Duration = Duration::from_secs(120);
/// How long an `eventually` step is polled.
pub const EVENTUALLY: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(500);

const ONCE: &str = "# → ";
const LATER: &str = "# eventually → ";

/// What a step must print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Nothing in particular (it must exit 0).
    Nothing,
    /// Run once; the output contains every piece.
    Once(Vec<String>),
    /// Polled until the output contains every piece.
    Eventually(Vec<String>),
}

/// One step of a tour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The file's line the step starts on (1-based).
    pub line: usize,
    /// The command, as written (comments included; bash ignores them).
    pub command: String,
    pub expect: Expect,
}

fn pieces(text: &str) -> Vec<String> {
    text.split(" ... ")
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

fn expectation(command: &str) -> Expect {
    // The last marker on the step's last line: a command may contain `#` itself.
    let last = command.lines().next_back().unwrap_or("");
    if let Some(i) = last.rfind(LATER) {
        return Expect::Eventually(pieces(&last[i + LATER.len()..]));
    }
    if let Some(i) = last.rfind(ONCE) {
        return Expect::Once(pieces(&last[i + ONCE.len()..]));
    }
    Expect::Nothing
}

/// The steps of `markdown`'s `sh tour` blocks, in order.
pub fn steps(markdown: &str) -> Vec<Step> {
    let mut out = Vec::new();
    let mut in_tour = false;
    let mut in_other = false;
    let mut pending: Option<(usize, String)> = None;
    for (i, line) in markdown.lines().enumerate() {
        let n = i + 1;
        let trimmed = line.trim_start();
        if let Some(info) = trimmed.strip_prefix("```") {
            if in_tour || in_other {
                in_tour = false;
                in_other = false;
                if let Some((line, command)) = pending.take() {
                    let expect = expectation(&command);
                    out.push(Step {
                        line,
                        command,
                        expect,
                    });
                }
            } else {
                let words: Vec<&str> = info.split_whitespace().collect();
                in_tour = words.first() == Some(&"sh") && words.contains(&"tour");
                in_other = !in_tour;
            }
            continue;
        }
        if !in_tour {
            continue;
        }
        let (start, mut command) = match pending.take() {
            Some((start, so_far)) => (start, so_far + "\n" + line),
            None => {
                if trimmed.is_empty() || trimmed.starts_with('#') {
                    continue;
                }
                (n, line.to_owned())
            }
        };
        if command.ends_with('\\') {
            pending = Some((start, command));
            continue;
        }
        command.truncate(command.trim_end().len());
        let expect = expectation(&command);
        out.push(Step {
            line: start,
            command,
            expect,
        });
    }
    out
}

/// One `bash` that runs a tour's steps; its process group is killed on drop (background jobs
/// such as a webhook receiver with it).
pub struct Shell {
    child: Child,
    stdin: ChildStdin,
    dir: PathBuf,
    seq: u64,
    /// Literal replacements applied to each step before it runs (a test's own addresses for
    /// the well-known ones a reader uses).
    pub rewrites: Vec<(String, String)>,
}

/// A step's result.
pub struct Ran {
    pub status: i32,
    pub output: String,
}

impl Shell {
    /// A shell in `cwd` with `path_prepend` first on PATH; its bookkeeping goes to `dir`.
    pub fn start(cwd: &Path, path_prepend: &Path, dir: &Path) -> Shell {
        use std::os::unix::process::CommandExt;
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![path_prepend.to_owned()];
        paths.extend(std::env::split_paths(&path));
        let mut child = Command::new("bash")
            .args(["--noprofile", "--norc", "-s"])
            .current_dir(cwd)
            .env("PATH", std::env::join_paths(paths).unwrap())
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "set -o pipefail").unwrap();
        // Its own directory: step files of an earlier shell must not answer for this one.
        let dir = dir.join(format!("shell-{}", child.id()));
        std::fs::create_dir_all(&dir).unwrap();
        Shell {
            child,
            stdin,
            dir,
            seq: 0,
            rewrites: Vec::new(),
        }
    }

    fn rewrite(&self, command: &str) -> String {
        self.rewrites
            .iter()
            .fold(command.to_owned(), |c, (from, to)| c.replace(from, to))
    }

    /// Runs `command` in the shell; `None` if it did not finish within `limit`.
    pub fn run(&mut self, command: &str, limit: Duration) -> Option<Ran> {
        self.seq += 1;
        let out = self.dir.join(format!("step-{}.out", self.seq));
        let rc = self.dir.join(format!("step-{}.rc", self.seq));
        let tmp = self.dir.join(format!("step-{}.rc.tmp", self.seq));
        let script = format!(
            "{{\n{}\n}} </dev/null >{out:?} 2>&1; echo $? >{tmp:?}; mv {tmp:?} {rc:?}\n",
            self.rewrite(command),
        );
        self.stdin.write_all(script.as_bytes()).unwrap();
        self.stdin.flush().unwrap();
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(text) = std::fs::read_to_string(&rc) {
                let status = text.trim().parse().unwrap_or(-1);
                let output = std::fs::read_to_string(&out).unwrap_or_default();
                return Some(Ran { status, output });
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the tour's shell exited ({status}) during: {command}");
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `step` as it asks; `Err` says why it failed, naming `file` and its line.
    pub fn step(&mut self, file: &str, step: &Step) -> Result<Duration, String> {
        let started = Instant::now();
        let at = format!("{file}:{}: `{}`", step.line, step.command);
        let missing = |want: &[String], output: &str| -> Vec<String> {
            want.iter()
                .filter(|w| !output.contains(w.as_str()))
                .cloned()
                .collect()
        };
        match &step.expect {
            Expect::Nothing | Expect::Once(_) => {
                let Some(ran) = self.run(&step.command, STEP_LIMIT) else {
                    return Err(format!("{at}\n  did not finish within {STEP_LIMIT:?}"));
                };
                if ran.status != 0 {
                    return Err(format!(
                        "{at}\n  exited {}; it printed:\n{}",
                        ran.status, ran.output
                    ));
                }
                if let Expect::Once(want) = &step.expect {
                    let gone = missing(want, &ran.output);
                    if !gone.is_empty() {
                        return Err(format!(
                            "{at}\n  should print {gone:?}; it printed:\n{}",
                            ran.output
                        ));
                    }
                }
            }
            Expect::Eventually(want) => {
                let deadline = Instant::now() + EVENTUALLY;
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let ran = self.run(&step.command, left.max(Duration::from_secs(1)));
                    let last = match ran {
                        Some(r) if r.status == 0 && missing(want, &r.output).is_empty() => break,
                        Some(r) => format!("exit {}:\n{}", r.status, r.output),
                        None => "(still running)".to_owned(),
                    };
                    if Instant::now() > deadline {
                        return Err(format!(
                            "{at}\n  did not print {want:?} within {EVENTUALLY:?}; last {last}"
                        ));
                    }
                    std::thread::sleep(POLL);
                }
            }
        }
        Ok(started.elapsed())
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group of a child we spawned with its own group.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGTERM);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tour_blocks_become_steps_with_their_lines_and_expectations() {
        let md = "# Title\n\n```sh\nnot a step\n```\n\n```sh tour\n# a comment\nA=1   # just a note\n$C x   # → \"ok\":true ... b\n\ncurl \\\n  y   # eventually → running\n```\n";
        let s = steps(md);
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!(s[0].line, 9);
        assert_eq!(s[0].expect, Expect::Nothing);
        assert_eq!(s[1].line, 10);
        assert_eq!(
            s[1].expect,
            Expect::Once(vec!["\"ok\":true".into(), "b".into()])
        );
        assert_eq!(s[2].line, 12);
        assert_eq!(s[2].command, "curl \\\n  y   # eventually → running");
        assert_eq!(s[2].expect, Expect::Eventually(vec!["running".into()]));
    }

    #[test]
    fn steps_share_one_shell_and_a_failing_step_names_its_line() {
        let work = tempfile::tempdir().unwrap();
        let mut sh = Shell::start(work.path(), Path::new("/nonexistent"), work.path());
        let md = "```sh tour\nX=4; echo started > bg.txt &\necho $((X + 1))   # → 5\ncat bg.txt   # eventually → started\necho nope   # → yes\n```\n";
        let s = steps(md);
        assert!(sh.step("T.md", &s[0]).is_ok());
        assert!(sh.step("T.md", &s[1]).is_ok(), "variables carry over");
        assert!(sh.step("T.md", &s[2]).is_ok(), "background jobs too");
        let why = sh.step("T.md", &s[3]).unwrap_err();
        assert!(why.starts_with("T.md:5: `echo nope"), "{why}");
        assert!(
            why.contains("should print [\"yes\"]") && why.contains("nope"),
            "{why}"
        );
        let failing = Step {
            line: 9,
            command: "false".into(),
            expect: Expect::Nothing,
        };
        assert!(sh.step("T.md", &failing).unwrap_err().contains("exited 1"));
    }
}
