//! The first admin, from `KILN_ADMIN__USERNAME` and `KILN_ADMIN__PASSWORD` at start-up,
//! so that a fresh container can be administered without a shell. Made only while no
//! enabled admin exists: after that the variables change nothing, and can be removed.

use serde_json::json;
use uuid::Uuid;

use super::{AccountError, Actor, check_username, passwords};
use crate::{
    access::Role,
    config::Secret,
    db::{Database, FirstAdminInsert, NewUser, User},
};

/// What [`ensure_first_admin`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstAdmin {
    Created(User),
    /// An enabled admin already exists; nothing was made.
    AlreadyPresent,
}

/// Makes `username` an admin with `password` if there is no enabled admin yet.
/// Idempotent, and safe when several processes on one database run it at once (replicas
/// starting together, with the same settings or not): one admin is made, the others find
/// it. Fails on a weak password or an invalid username, and when no admin exists but
/// `username` is taken by a user who is not one (making that user an admin is left to a
/// person: `kiln admin reset-password` and an admin's console).
pub async fn ensure_first_admin(
    db: &dyn Database,
    username: &str,
    password: &Secret,
) -> Result<FirstAdmin, AccountError> {
    if db.count_admins().await? > 0 {
        tracing::info!("an admin exists; the first-admin settings are not used");
        return Ok(FirstAdmin::AlreadyPresent);
    }
    check_username(username)?;
    passwords::check_policy(password.expose())?;
    let password_hash = passwords::hash(password).await?;
    let new = NewUser {
        id: Uuid::now_v7(),
        username: username.to_owned(),
        password_hash,
        role: Role::Admin,
        max_active: None,
    };
    let audit = Actor::system("bootstrap").audit(
        "user.create",
        Some(new.id.to_string()),
        json!({ "username": username, "role": Role::Admin.as_str() }),
    );
    // The count above is only a shortcut: another process may be making the first admin
    // right now, and this insert checks again under a lock.
    match db.create_first_admin(&new, &audit).await? {
        FirstAdminInsert::Created(user) => {
            tracing::info!(username = %user.username, "made the first admin");
            Ok(FirstAdmin::Created(user))
        }
        FirstAdminInsert::AdminExists => {
            tracing::info!("another process made the first admin meanwhile; the first-admin settings are not used");
            Ok(FirstAdmin::AlreadyPresent)
        }
        FirstAdminInsert::UsernameTaken => Err(AccountError::UsernameTaken(username.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::{create_user, testing};

    #[tokio::test]
    async fn the_first_admin_is_made_once_and_only_while_there_is_none() {
        let (_dir, db) = testing::database().await;
        let weak = ensure_first_admin(&*db, "root", &Secret::new("short")).await;
        assert!(matches!(weak, Err(AccountError::WeakPassword(_))), "{weak:?}");
        assert_eq!(db.count_admins().await.unwrap(), 0);

        let made = ensure_first_admin(&*db, "root", &Secret::new("first admin password")).await.unwrap();
        let FirstAdmin::Created(admin) = made else { panic!("not made: {made:?}") };
        assert_eq!(admin.role, Role::Admin);
        let stored = db.find_user_by_name("root").await.unwrap().unwrap().password_hash;
        assert!(passwords::verify(&Secret::new("first admin password"), Some(&stored)).await.unwrap());

        // Run again (every start-up), even with other values: nothing changes.
        assert_eq!(
            ensure_first_admin(&*db, "root", &Secret::new("another password")).await.unwrap(),
            FirstAdmin::AlreadyPresent
        );
        assert_eq!(
            ensure_first_admin(&*db, "other", &Secret::new("another password")).await.unwrap(),
            FirstAdmin::AlreadyPresent
        );
        assert_eq!(db.count_admins().await.unwrap(), 1);
        assert!(db.find_user_by_name("other").await.unwrap().is_none());
        let stored_again = db.find_user_by_name("root").await.unwrap().unwrap().password_hash;
        assert_eq!(stored_again, stored, "the password is not reset by a restart");
    }

    #[tokio::test]
    async fn first_admins_asked_for_at_once_make_one() {
        let (_dir, db) = testing::database().await;
        let names = ["root", "root", "boss", "chief", "root", "boss"];
        let password = Secret::new("first admin password");
        let made = futures::future::join_all(names.iter().map(|name| ensure_first_admin(&*db, name, &password))).await;
        let created = made.iter().filter(|m| matches!(m, Ok(FirstAdmin::Created(_)))).count();
        assert_eq!(created, 1, "{made:?}");
        assert!(made.iter().all(Result::is_ok), "the others find it, without an error: {made:?}");
        assert_eq!(db.count_admins().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_taken_name_without_any_admin_is_an_error_not_a_promotion() {
        let (_dir, db) = testing::database().await;
        create_user(&*db, "root", &Secret::new("plain user password"), Role::User, &Actor::system("cli"))
            .await
            .unwrap();
        let result = ensure_first_admin(&*db, "root", &Secret::new("first admin password")).await;
        assert!(matches!(result, Err(AccountError::UsernameTaken(_))), "{result:?}");
        assert_eq!(db.count_admins().await.unwrap(), 0);
    }
}
