//! The SMTP sink lives in `testkit` (the bench uses it too); the tests read codes and links
//! strictly, from the decoded text part of what authd really sent.

pub use testkit::smtp::{Behaviour, MailSink, Received};

/// The six-digit code in a message's text part; fails the test unless there is exactly one.
pub fn extract_code(message: &Received) -> String {
    message.code().unwrap_or_else(|| {
        panic!(
            "expected exactly one 6-digit code in the text part {:?}",
            message.text()
        )
    })
}

#[cfg(test)]
mod tests {
    use reqwest::StatusCode;
    use serde_json::Value;

    use super::*;
    use crate::helpers::{PASSWORD, TestApp};

    #[tokio::test]
    async fn a_login_code_arrives_over_smtp_as_text_and_html_named_after_the_product() {
        let app = TestApp::spawn_with(Behaviour::Accept, |s| {
            s.mail.product_name = "Acme <Shop>".into();
        })
        .await;
        app.register("multi@example.test", true).await;
        let body: Value = app
            .login("multi@example.test", PASSWORD)
            .await
            .json()
            .await
            .unwrap();
        let challenge = body["challenge_token"].as_str().unwrap();

        let message = app.mail.wait_for("multi@example.test", 1).await;
        assert!(
            message.data.contains("multipart/alternative"),
            "{}",
            message.data
        );
        assert_eq!(message.subject(), "Your sign-in code for Acme <Shop>");
        let code = extract_code(&message);
        assert!(message.text().contains("Acme <Shop>"), "{}", message.text());
        let html = message.html().expect("an HTML part");
        assert!(html.contains(&code), "{html}");
        assert!(html.contains("Acme &lt;Shop&gt;"), "{html}");
        assert_eq!(message.link(), None, "a login code comes without a link");

        assert_eq!(
            app.submit_code(challenge, &code).await.status(),
            StatusCode::OK
        );
    }
}
