//! The password policy (NIST SP 800-63B, OWASP ASVS): length is checked by `Password`; here the
//! most common passwords and passwords made of the user's own email or name are refused.
//! No composition rules.

use zxcvbn::matching::patterns::MatchPattern;

use crate::domain::Password;

/// How far down the common-password list a password is refused (zxcvbn ships about 30,000).
pub const COMMON_PASSWORD_RANK: usize = 10_000;

/// Checks a password against the list of common passwords (case-insensitively, including
/// reversed and l33t spellings) and against the user's own details. Returns why it is refused.
pub fn check_password(password: &Password, user_inputs: &[&str]) -> Result<(), String> {
    let text = password.expose();
    let estimate = zxcvbn::zxcvbn(text, user_inputs);
    if let [only] = estimate.sequence()
        && let MatchPattern::Dictionary(word) = &only.pattern
        && only.i == 0
        && only.token.chars().count() == text.chars().count()
    {
        // zxcvbn does not export its dictionary enum; its Debug name identifies the list.
        let dictionary = format!("{:?}", word.dictionary_name);
        if dictionary == "UserInputs" {
            return Err("must not be your email address or name".into());
        }
        if dictionary == "Passwords" && word.rank <= COMMON_PASSWORD_RANK {
            return Err(format!(
                "is one of the {COMMON_PASSWORD_RANK} most common passwords: choose another"
            ));
        }
    }
    if u8::from(estimate.score()) == 0 {
        return Err(
            "is too easy to guess (repeated or sequential characters, or a common word)".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, inputs: &[&str]) -> Result<(), String> {
        check_password(&Password::parse(text).unwrap(), inputs)
    }

    #[test]
    fn common_passwords_are_refused_in_any_case_or_spelling() {
        for common in [
            "password",
            "12345678",
            "PASSWORD",
            "qwertyuiop",
            "iloveyou",
            "p@ssw0rd",
            "drowssap",
        ] {
            let err = check(common, &[]).unwrap_err();
            assert!(
                err.contains("common") || err.contains("guess"),
                "{common}: {err}"
            );
        }
    }

    #[test]
    fn repeated_or_sequential_characters_are_refused() {
        assert!(check("aaaaaaaa", &[]).is_err());
        assert!(check("abcdefgh", &[]).is_err());
    }

    #[test]
    fn the_users_own_details_are_refused() {
        assert!(
            check(
                "ada.lovelace",
                &["ada.lovelace@example.test", "ada.lovelace"]
            )
            .is_err()
        );
    }

    #[test]
    fn ordinary_passphrases_pass_without_composition_rules() {
        for fine in [
            "correct horse battery",
            "tr0ub4dor&3x",
            "my cat eats lasagne",
            "zqvnwpmrlkst",
        ] {
            assert_eq!(check(fine, &[]), Ok(()), "{fine}");
        }
    }
}
