//! AWS Secrets Manager: the passwords a manifest gives by ARN (`password_secret`), and the ones
//! RDS manages for Aurora masters. The value is a SecretString: the password itself, or a JSON
//! object whose `password` is it (RDS's format). Nothing is kept here; the caller passes what it
//! read to `dmf_db::secret::remember` for its next connections.

use crate::{Clients, Error};

/// The password the secret `arn` holds, read now in the secret's region.
pub async fn password(clients: &Clients, arn: &str) -> Result<String, Error> {
    let region = arn.split(':').nth(3).filter(|r| !r.is_empty()).ok_or_else(|| Error::Config(format!("{arn:?} is not a Secrets Manager ARN")))?;
    let aws = clients.get(Some(region)).await?;
    let out = aws.secrets.get_secret_value().secret_id(arn).send().await.map_err(|e| Error::from_sdk("GetSecretValue", e))?;
    let text = out.secret_string().ok_or_else(|| Error::Config(format!("secret {arn} holds no SecretString")))?;
    Ok(password_of(text))
}

/// A SecretString's password: the `password` of a JSON object, else the string itself.
fn password_of(text: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(o)) => o.get("password").and_then(|p| p.as_str()).map(str::to_string).unwrap_or_else(|| text.to_string()),
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::password_of;

    #[test]
    fn rds_json_secrets_and_plain_ones_both_give_the_password() {
        assert_eq!(password_of(r#"{"username":"dmf","password":"p@ss"}"#), "p@ss");
        assert_eq!(password_of("plain-pw"), "plain-pw");
    }
}
