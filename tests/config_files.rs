//! Every shipped config and valid fixture loads; every invalid fixture fails
//! with the message its `# expect:` lines give; `--check` exits 0 or 1.

use l4mesh::Config;
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

#[test]
fn it_should_explain_every_invalid_fixture() {
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
        let message = match Config::load(&file) {
            Ok(_) => panic!("{} should be invalid", file.display()),
            Err(e) => e.to_string(),
        };
        assert!(
            message.starts_with(&file.display().to_string()),
            "the message names the file: {message}"
        );
        for needle in expected {
            assert!(
                message.contains(needle),
                "{}:\n{message}\nlacks: {needle}",
                file.display()
            );
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
/// mutations of the valid fixtures (byte flips, cuts, splices of other
/// fixtures) must each parse or fail with a message, never panic.
#[test]
fn it_should_never_panic_on_mangled_configs() {
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
        if let Err(e) = Config::parse(&text, Path::new("mangled.toml")) {
            assert!(!e.to_string().is_empty(), "round {round}");
        }
    }
}
