//! The `users` table and session revocation, shared by galion-auth (which
//! creates accounts and sessions) and galion-users (which edits and deletes
//! them); both services point at the same database.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::db::{Db, Tx};
use crate::error::ApiError;
use crate::{with_db, with_tx};

/// Columns selected into [`UserRow`].
pub const USER_COLUMNS: &str =
    "id, email, name, password_hash, role, email_verified, is_active, created_at, updated_at, last_login_at, deleted_at";

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct UserRow {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    pub password_hash: String,
    pub role: String,
    pub email_verified: bool,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
}

impl UserRow {
    /// Active and not soft-deleted.
    pub fn is_usable(&self) -> bool {
        self.is_active && self.deleted_at.is_none()
    }

    pub fn is_admin(&self) -> bool {
        self.role == "admin"
    }

    pub fn view(&self) -> UserView {
        UserView {
            id: self.id,
            email: self.email.clone(),
            name: self.name.clone(),
            role: self.role.clone(),
            email_verified: self.email_verified,
            is_active: self.is_active,
            created_at: self.created_at,
            updated_at: self.updated_at,
            last_login_at: self.last_login_at,
        }
    }
}

/// The public user object (never contains the password hash).
#[derive(Clone, Debug, Serialize)]
pub struct UserView {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    pub role: String,
    pub email_verified: bool,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
}

/// A live (not soft-deleted) user by id.
pub async fn find_by_id(db: &Db, id: Uuid) -> Result<Option<UserRow>, sqlx::Error> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1 AND deleted_at IS NULL");
    with_db!(db, |p| sqlx::query_as::<_, UserRow>(&sql)
        .bind(id)
        .fetch_optional(p)
        .await)
}

/// A live user by normalised email.
pub async fn find_by_email(db: &Db, email: &str) -> Result<Option<UserRow>, sqlx::Error> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE email = $1 AND deleted_at IS NULL");
    with_db!(db, |p| sqlx::query_as::<_, UserRow>(&sql)
        .bind(email)
        .fetch_optional(p)
        .await)
}

/// Whether an access token id has been revoked.
pub async fn is_jti_revoked(db: &Db, jti: &str) -> Result<bool, sqlx::Error> {
    let row: Option<(String,)> = with_db!(db, |p| sqlx::query_as(
        "SELECT jti FROM revoked_tokens WHERE jti = $1"
    )
    .bind(jti)
    .fetch_optional(p)
    .await)?;
    Ok(row.is_some())
}

/// Records one access-token id as revoked until its expiry.
pub async fn revoke_jti(
    tx: &mut Tx,
    jti: &str,
    user_id: Option<Uuid>,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    with_tx!(tx, |c| {
        sqlx::query(
        "INSERT INTO revoked_tokens (jti, user_id, expires_at, revoked_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (jti) DO NOTHING"
    )
    .bind(jti)
    .bind(user_id)
    .bind(expires_at)
    .bind(now)
    .execute(c)
    .await.map(|r| r.rows_affected())
    })?;
    Ok(())
}

/// Revokes a refresh-token family and every unexpired access token issued
/// alongside it.
pub async fn revoke_family(
    tx: &mut Tx,
    family_id: Uuid,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    with_tx!(tx, |c| {
        sqlx::query(
            "INSERT INTO revoked_tokens (jti, user_id, expires_at, revoked_at) \
         SELECT access_jti, user_id, access_expires_at, $2 FROM refresh_tokens \
         WHERE family_id = $1 AND access_expires_at > $2 \
         ON CONFLICT (jti) DO NOTHING",
        )
        .bind(family_id)
        .bind(now)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected())?;
        sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $2 WHERE family_id = $1 AND revoked_at IS NULL",
        )
        .bind(family_id)
        .bind(now)
        .execute(c)
        .await
        .map(|r| r.rows_affected())
    })?;
    Ok(())
}

/// Revokes every session of a user (password reset, deactivation, delete).
pub async fn revoke_all_sessions(
    tx: &mut Tx,
    user_id: Uuid,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    with_tx!(tx, |c| {
        sqlx::query(
            "INSERT INTO revoked_tokens (jti, user_id, expires_at, revoked_at) \
         SELECT access_jti, user_id, access_expires_at, $2 FROM refresh_tokens \
         WHERE user_id = $1 AND access_expires_at > $2 \
         ON CONFLICT (jti) DO NOTHING",
        )
        .bind(user_id)
        .bind(now)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected())?;
        sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
        )
        .bind(user_id)
        .bind(now)
        .execute(c)
        .await
        .map(|r| r.rows_affected())
    })?;
    Ok(())
}

/// Trims and lowercases an email address.
pub fn normalize_email(raw: &str) -> String {
    raw.trim().to_lowercase()
}

/// Syntax check of a normalised address (deliverability is proven by the
/// verification mail, not by a regex).
pub fn validate_email(email: &str) -> Result<(), ApiError> {
    let bad = || ApiError::Validation("email is not a valid address".into());
    if email.len() > 254 || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    let (local, domain) = email.rsplit_once('@').ok_or_else(bad)?;
    if local.is_empty() || local.len() > 64 || local.contains('@') {
        return Err(bad());
    }
    let labels: Vec<&str> = domain.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_alphanumeric() || c == '-')
    };
    if labels.len() < 2 || !labels.iter().all(label_ok) {
        return Err(bad());
    }
    Ok(())
}

/// A display name: 1 to 100 characters, no control characters.
pub fn validate_name(raw: &str) -> Result<String, ApiError> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(ApiError::Validation("name is required".into()));
    }
    if name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::Validation(
            "name must be at most 100 printable characters".into(),
        ));
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert_eq!(normalize_email("  Ann@Example.COM "), "ann@example.com");
        assert!(validate_email("ann@example.com").is_ok());
        assert!(validate_email("a.b+c@sub.example.co").is_ok());
        for bad in [
            "",
            "ann",
            "ann@",
            "@example.com",
            "ann@example",
            "a b@example.com",
            "ann@-x.com",
            "ann@x..com",
        ] {
            assert!(validate_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names() {
        assert_eq!(validate_name("  Ann ").ok().as_deref(), Some("Ann"));
        assert!(validate_name("   ").is_err());
        assert!(validate_name("a\u{0}b").is_err());
    }
}
