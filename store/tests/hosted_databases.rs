//! The accounts' own databases on the test MariaDB (`NPANEL_TEST_MYSQL_URL`): names, the
//! package's limit (also under concurrent creates), idempotent creates, sizes listed from
//! `information_schema`, the `_` of the prefix matched literally. Each test uses account names
//! of its own and drops what it made.

use store::{DatabaseError, HostedDatabases};

fn url() -> Option<String> {
    let u = std::env::var("NPANEL_TEST_MYSQL_URL")
        .ok()
        .filter(|u| !u.is_empty());
    if u.is_none() {
        eprintln!("SKIP: NPANEL_TEST_MYSQL_URL is not set");
    }
    u
}

/// A username of this run (`[a-z][a-z0-9]*`, ≤ 16).
fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}{}", n % 1_000_000_000_000)
}

/// Drops every `<account>_%` database however the test ends.
struct Cleanup(String, Vec<String>);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let (url, accounts) = (self.0.clone(), self.1.clone());
        let _ = std::thread::spawn(move || {
            tokio::runtime::Runtime::new().unwrap().block_on(async move {
                let Ok(pool) = sqlx::mysql::MySqlPoolOptions::new()
                    .max_connections(1)
                    .connect(&url)
                    .await
                else {
                    return;
                };
                for a in accounts {
                    let names: Vec<String> = sqlx::query_scalar(
                        "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE ? ESCAPE '!'",
                    )
                    .bind(format!("{a}!_%"))
                    .fetch_all(&pool)
                    .await
                    .unwrap_or_default();
                    for n in names {
                        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{n}`"))
                            .execute(&pool)
                            .await;
                    }
                }
                pool.close().await;
            })
        })
        .join();
    }
}

#[tokio::test]
async fn create_list_limit_and_sizes() {
    let Some(url) = url() else { return };
    let acct = unique("hd");
    // An account whose name is `acct` + one more character: `LIKE 'acct_%'` unescaped would
    // count its databases as `acct`'s.
    let near = format!("{acct}x");
    let _c = Cleanup(url.clone(), vec![acct.clone(), near.clone()]);
    let h = HostedDatabases::new(&url).unwrap();
    let raw = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    sqlx::query(&format!("CREATE DATABASE `{near}_other`"))
        .execute(&raw)
        .await
        .unwrap();
    assert_eq!(h.count(&acct).await.unwrap(), 0);

    let c = h.create(&acct, "wp", Some(2)).await.unwrap();
    assert_eq!((c.name.clone(), c.created), (format!("{acct}_wp"), true));
    // A retried job: already so, not refused.
    let again = h.create(&acct, "wp", Some(1)).await.unwrap();
    assert!(!again.created);
    h.create(&acct, "shop_2", Some(2)).await.unwrap();
    let e = h.create(&acct, "third", Some(2)).await.unwrap_err();
    assert!(
        matches!(
            e,
            DatabaseError::LimitReached {
                used: 2,
                limit: 2,
                ..
            }
        ),
        "{e}"
    );
    assert!(!h.exists(&format!("{acct}_third")).await.unwrap());
    let e = h.create(&acct, "Bad-Name", None).await.unwrap_err();
    assert!(matches!(e, DatabaseError::Invalid(_)), "{e}");

    // Sizes: a table with rows counts; the other database is empty.
    sqlx::query(&format!(
        "CREATE TABLE `{acct}_wp`.posts (id INT PRIMARY KEY AUTO_INCREMENT, body TEXT) ENGINE=InnoDB"
    ))
    .execute(&raw)
    .await
    .unwrap();
    sqlx::query(&format!(
        "INSERT INTO `{acct}_wp`.posts (body) SELECT REPEAT('x', 200) FROM `{acct}_wp`.seq_1_to_2000"
    ))
    .execute(&raw)
    .await
    .unwrap();
    sqlx::query(&format!("ANALYZE TABLE `{acct}_wp`.posts"))
        .execute(&raw)
        .await
        .unwrap();
    raw.close().await;
    let list = h.list(&acct).await.unwrap();
    let names: Vec<&str> = list.iter().map(|d| d.short_name.as_str()).collect();
    assert_eq!(names, ["shop_2", "wp"]);
    assert_eq!((list[0].size_bytes, list[0].tables), (0, 0));
    assert!(list[1].size_bytes >= 256 * 1024, "{list:?}");
    assert_eq!(list[1].tables, 1);
    assert_eq!(h.count(&near).await.unwrap(), 1);
    // The config also takes `mariadb://` for the same server.
    let m = HostedDatabases::new(&url.replacen("mysql://", "mariadb://", 1)).unwrap();
    assert_eq!(m.count(&acct).await.unwrap(), 2);
}

#[tokio::test]
async fn concurrent_creates_never_pass_the_limit() {
    let Some(url) = url() else { return };
    let acct = unique("hc");
    let _c = Cleanup(url.clone(), vec![acct.clone()]);
    let h = HostedDatabases::new(&url).unwrap();
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let (h, acct) = (h.clone(), acct.clone());
            tokio::spawn(async move { h.create(&acct, &format!("d{i}"), Some(2)).await })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(c) => {
                assert!(c.created);
                ok += 1
            }
            Err(DatabaseError::LimitReached { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(ok, 2);
    assert_eq!(h.count(&acct).await.unwrap(), 2);
}

#[tokio::test]
async fn a_server_that_is_down_is_unavailable() {
    // Nothing listens on port 1 of loopback.
    let h = HostedDatabases::new("mysql://root@127.0.0.1:1").unwrap();
    let e = h.list("alice").await.unwrap_err();
    assert!(matches!(e, DatabaseError::Unavailable(_)), "{e}");
    let e = h.create("alice", "x", None).await.unwrap_err();
    assert!(matches!(e, DatabaseError::Unavailable(_)), "{e}");
    assert!(HostedDatabases::new("http://x").is_err());
    assert!(HostedDatabases::new("mariadb://root@127.0.0.1:1").is_ok());
}
