//! `kiln admin`: users made and passwords reset from the command line, in the database
//! the configuration names.

use std::{
    io::Write,
    path::Path,
    process::{Command, Output, Stdio},
};

use kiln::{access::Role, accounts::passwords, config::Secret};

use crate::helpers::database_url;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

/// Runs `kiln admin …` in `dir` (its data directory), writing `stdin` to it. On SQLite
/// it uses the database of the data directory; on PostgreSQL, the test's own database,
/// named as an operator would name it, in `KILN_DATABASE__URL`.
fn admin(dir: &Path, args: &[&str], stdin: &str) -> Output {
    let mut command = Command::new(KILN);
    command.arg("admin").args(args).arg("--data-dir").arg(dir).env_remove("KILN_CONFIG").current_dir(dir);
    if crate::common::postgres::enabled() {
        command.env("KILN_DATABASE__URL", database_url(dir));
    }
    let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn admin_create_makes_a_user_once_and_refuses_a_taken_name_or_a_weak_password() {
    let dir = tempfile::tempdir().unwrap();
    let created = admin(dir.path(), &["create", "--username", "Root", "--password-stdin"], "correct horse battery\n");
    assert_eq!(created.status.code(), Some(0), "{}", stderr(&created));
    assert!(String::from_utf8_lossy(&created.stdout).contains("made admin `Root`"));

    let again = admin(dir.path(), &["create", "--username", "root", "--password-stdin"], "another password\n");
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("The username `root` is taken."), "{}", stderr(&again));

    let weak = admin(dir.path(), &["create", "--username", "bob", "--role", "user", "--password-stdin"], "short\n");
    assert_eq!(weak.status.code(), Some(1));
    assert!(stderr(&weak).contains("at least 8 characters"), "{}", stderr(&weak));

    let db = kiln::db::connect(&database_url(dir.path()), 1).await.unwrap();
    let root = db.find_user_by_name("root").await.unwrap().expect("the user exists");
    assert_eq!((root.user.username.as_str(), root.user.role), ("Root", Role::Admin));
    assert!(
        passwords::verify(&Secret::new("correct horse battery"), Some(&root.password_hash)).await.unwrap(),
        "the password is the line read, without its line ending"
    );
    assert!(!passwords::verify(&Secret::new("another password"), Some(&root.password_hash)).await.unwrap());
    assert!(db.find_user_by_name("bob").await.unwrap().is_none(), "no user for a weak password");
    assert_eq!(db.count_admins().await.unwrap(), 1);
}

#[tokio::test]
async fn admin_reset_password_sets_the_password_of_an_existing_user_only() {
    let dir = tempfile::tempdir().unwrap();
    let made =
        admin(dir.path(), &["create", "--username", "sue", "--role", "user", "--password-stdin"], "first password\r\n");
    assert_eq!(made.status.code(), Some(0), "{}", stderr(&made));
    let reset = admin(dir.path(), &["reset-password", "--username", "SUE", "--password-stdin"], "second password\n");
    assert_eq!(reset.status.code(), Some(0), "{}", stderr(&reset));
    let missing =
        admin(dir.path(), &["reset-password", "--username", "nobody", "--password-stdin"], "third password\n");
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("no user named `nobody`"), "{}", stderr(&missing));

    let db = kiln::db::connect(&database_url(dir.path()), 1).await.unwrap();
    let sue = db.find_user_by_name("sue").await.unwrap().unwrap();
    assert_eq!(sue.user.role, Role::User);
    assert!(passwords::verify(&Secret::new("second password"), Some(&sue.password_hash)).await.unwrap());
    assert!(!passwords::verify(&Secret::new("first password"), Some(&sue.password_hash)).await.unwrap());
}
