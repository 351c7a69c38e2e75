//! Every shipped config and valid fixture loads; every invalid fixture fails
//! with the message its `# expect:` lines give; `--check` exits 0 or 1.

use l4mesh::Config;
use l4mesh::config::{ConfigError, Problem};
use std::path::{Path, PathBuf};
use std::process::Command;

fn toml_files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .toml files in {}", dir.display());
    files
}

#[test]
fn it_should_load_every_shipped_config_and_valid_fixture() {
    for file in toml_files("conf")
        .into_iter()
        .chain(toml_files("tests/fixtures/valid"))
    {
        if let Err(e) = Config::load(&file) {
            panic!("{e}");
        }
    }
}

/// The sections a key path can start with.
const SECTIONS: [&str; 6] = [
    "runtime",
    "listeners",
    "services",
    "registry",
    "admin",
    "access_log",
];

/// Asserts that `problem` names a key path of the file, a value, a reason
/// and a fix, and that the message shows them as `key = value: reason; fix:
/// fix`.
fn assert_explained(problem: &Problem, message: &str) {
    let section = problem.key.split(['.', '[']).next().unwrap_or_default();
    assert!(
        SECTIONS.contains(&section) && !problem.key.ends_with('.'),
        "not a key path: {problem:?}"
    );
    assert!(!problem.value.is_empty(), "no value: {problem:?}");
    assert!(!problem.reason.is_empty(), "no reason: {problem:?}");
    assert!(!problem.fix.is_empty(), "no fix: {problem:?}");
    let shown = format!(
        "{} = {}: {}; fix: {}",
        problem.key, problem.value, problem.reason, problem.fix
    );
    assert!(message.contains(&shown), "{message}\nlacks: {shown}");
}

/// Asserts that a syntax error says where: `line L, column C: what`.
fn assert_located(message: &str) {
    let (line, rest) = message
        .strip_prefix("line ")
        .and_then(|m| m.split_once(", column "))
        .unwrap_or_else(|| panic!("no line and column: {message}"));
    let (column, what) = rest
        .split_once(": ")
        .unwrap_or_else(|| panic!("no column: {message}"));
    assert!(line.parse::<u32>().is_ok_and(|l| l >= 1), "{message}");
    assert!(column.parse::<u32>().is_ok_and(|c| c >= 1), "{message}");
    assert!(!what.trim().is_empty(), "{message}");
}

#[test]
fn it_should_explain_every_invalid_fixture_with_its_key_path_and_fix() {
    for file in toml_files("tests/fixtures/invalid") {
        let text = std::fs::read_to_string(&file).unwrap();
        let expected: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(
            !expected.is_empty(),
            "{} has no `# expect:` line",
            file.display()
        );
        let error = match Config::load(&file) {
            Ok(_) => panic!("{} should be invalid", file.display()),
            Err(e) => e,
        };
        let message = error.to_string();
        assert!(
            message.starts_with(&format!("{}: ", file.display())),
            "the message names the file: {message}"
        );
        for needle in &expected {
            assert!(
                message.contains(needle),
                "{}:\n{message}\nlacks: {needle}",
                file.display()
            );
        }
        match &error {
            ConfigError::Invalid { problems, .. } => {
                for problem in problems {
                    assert_explained(problem, &message);
                    // The fixture pins every key that is wrong, and how
                    // to fix it.
                    let key = format!("{} = ", problem.key);
                    assert!(
                        expected.iter().any(|e| e.contains(&key)),
                        "{}: no `# expect:` names {key}",
                        file.display()
                    );
                    let fix = format!("; fix: {}", problem.fix);
                    assert!(
                        expected.iter().any(|e| e.contains("; fix: ")
                            && fix.contains(e.split_once("; fix: ").unwrap().1)),
                        "{}: no `# expect:` gives the fix of {}",
                        file.display(),
                        problem.key
                    );
                }
            }
            ConfigError::Syntax { message, .. } => assert_located(message),
            ConfigError::Read { .. } => panic!("{message}"),
        }
    }
}

fn check(file: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_l4mesh"))
        .arg("-c")
        .arg(file)
        .arg("--check")
        .output()
        .unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.code(), text(out.stdout), text(out.stderr))
}

#[test]
fn it_should_exit_0_from_check_on_a_valid_file() {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/demo.toml");
    let (code, stdout, _) = check(&demo);
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains("valid (1 listener(s), 1 service(s))"),
        "{stdout}"
    );
}

#[test]
fn it_should_exit_1_from_check_with_the_problem_on_an_invalid_file() {
    let bad = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid/weight_zero.toml");
    let (code, _, stderr) = check(&bad);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("services.web.endpoints[1].weight = 0"),
        "{stderr}"
    );
    let (code, _, stderr) = check(Path::new("/nonexistent/l4mesh.toml"));
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("/nonexistent/l4mesh.toml: cannot read the config file"),
        "{stderr}"
    );
}

#[test]
fn it_should_answer_help_and_version() {
    let exe = env!("CARGO_BIN_EXE_l4mesh");
    let help = Command::new(exe).arg("--help").output().unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--check"));
    let version = Command::new(exe).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
}

/// A cheap, always-on cousin of the `config` fuzz target: thousands of
/// mutations of the fixtures (byte flips, cuts, splices of other fixtures)
/// must each parse, or fail with a message that says where (a syntax error)
/// or names every wrong key with its value, why and the fix; never panic.
#[test]
fn it_should_explain_every_mangled_config_and_never_panic() {
    let seeds: Vec<Vec<u8>> = toml_files("tests/fixtures/valid")
        .into_iter()
        .chain(toml_files("tests/fixtures/invalid"))
        .map(|f| std::fs::read(f).unwrap())
        .collect();
    let mut rng = fastrand::Rng::with_seed(7);
    for round in 0..5000 {
        let mut bytes = seeds[rng.usize(..seeds.len())].clone();
        for _ in 0..rng.usize(1..4) {
            let len = bytes.len();
            let at = rng.usize(..len.max(1)).min(len);
            match rng.u8(..4) {
                0 => bytes.truncate(at),
                1 if at < len => bytes[at] = rng.u8(..),
                2 => {
                    let other = &seeds[rng.usize(..seeds.len())];
                    let from = rng.usize(..other.len());
                    let piece = &other[from..(from + 40).min(other.len())];
                    bytes.splice(at..at, piece.iter().copied());
                }
                _ => bytes.insert(at, b"\"=[]{}.0-9 \n"[rng.usize(..12)]),
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        let Err(error) = Config::parse(&text, Path::new("mangled.toml")) else {
            continue;
        };
        let message = error.to_string();
        match &error {
            ConfigError::Invalid { problems, .. } => {
                assert!(!problems.is_empty(), "round {round}: {message}");
                for problem in problems {
                    assert_explained(problem, &message);
                }
            }
            ConfigError::Syntax { message, .. } => assert_located(message),
            ConfigError::Read { .. } => panic!("round {round}: {message}"),
        }
    }
}
