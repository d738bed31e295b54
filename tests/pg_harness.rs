//! The PostgreSQL test harness: `common::pg::database` gives every caller a fresh, empty
//! database of its own on the server named by `LOGDOG_TEST_POSTGRES`, and collectors start on
//! one with `Collector::start_on_store`.

mod common;

use common::pg;

/// The tables outside PostgreSQL's own schemas, one per line.
const USER_TABLES: &str = "SELECT tablename FROM pg_tables \
     WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY tablename";

#[test]
fn two_calls_give_two_distinct_empty_databases() {
    let Some(a) = pg::database("harness a") else {
        return;
    };
    let Some(b) = pg::database("harness a") else {
        return;
    };
    assert_ne!(a, b, "the same hint gave the same database twice");
    let name = |url: &str| {
        let path = url.split('?').next().unwrap_or(url);
        path.rsplit_once('/')
            .map(|(_, n)| n.to_string())
            .unwrap_or_default()
    };
    for url in [&a, &b] {
        // Reachable, and it is the database the URL names.
        assert_eq!(pg::psql(url, "SELECT current_database()").trim(), name(url));
        assert_eq!(pg::psql(url, USER_TABLES), "", "{url} is not empty");
    }
    // What one test writes, the other does not see.
    pg::psql(&a, "CREATE TABLE mine (x int); INSERT INTO mine VALUES (1)");
    assert_eq!(pg::psql(&a, USER_TABLES).trim(), "mine");
    assert_eq!(pg::psql(&b, USER_TABLES), "");
}

#[test]
fn the_database_replaces_the_path_and_keeps_the_query() {
    assert_eq!(
        pg::with_database("postgres://u@127.0.0.1:5432/postgres", "t_x"),
        "postgres://u@127.0.0.1:5432/t_x"
    );
    assert_eq!(
        pg::with_database("postgresql://u@h:1/postgres?sslmode=disable", "t_x"),
        "postgresql://u@h:1/t_x?sslmode=disable"
    );
    assert_eq!(
        pg::with_database("postgres://u@h:1", "t_x"),
        "postgres://u@h:1/t_x"
    );
}

#[test]
fn collectors_start_on_a_test_database_and_share_it() {
    let Some(db) = pg::database("harness collectors") else {
        return;
    };
    let tmp = common::tempdir();
    let a = common::Collector::start_on_store(&tmp.path().join("a"), &db, "127.0.0.1:0", &[]);
    let b = common::Collector::start_on_store(&tmp.path().join("b"), &db, "127.0.0.1:0", &[]);
    let r = common::run_butler(
        tmp.path(),
        &[
            "--output",
            &a.output(),
            "--prefix",
            "harness",
            "run",
            "--no-echo",
            "--",
            "sh",
            "-c",
            "echo one; echo two",
        ],
    );
    r.assert_code(0);
    // Written through one collector, read through the other.
    let out = common::logdog(&b.addr, &["cat", "default/harness/+/stdout"]);
    out.assert_code(0);
    assert_eq!(out.stdout_str(), "one\ntwo\n");
    // The collector made its schema in the test's database.
    assert_ne!(pg::psql(&db, USER_TABLES), "");
    a.stop();
    b.stop();
}
