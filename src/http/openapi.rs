//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use utoipa::openapi::header::{Header, HeaderBuilder};
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, ObjectBuilder, Ref, RefOr, Type};
use utoipa::{Modify, OpenApi};

use super::error::Problem;
use super::{handlers, mfa, pages, passkeys, recovery};
use crate::domain::User;
use crate::error::FieldError;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "authd",
        description = "Email and password login with an optional emailed one-time code. \
                       Every error is RFC 9457 problem details with a stable `code`."
    ),
    paths(
        handlers::register,
        handlers::login,
        handlers::login_otp,
        handlers::refresh,
        handlers::logout,
        recovery::verify_email,
        recovery::resend_verification,
        recovery::forgot_password,
        recovery::reset_password,
        recovery::change_password,
        recovery::request_email_change,
        recovery::confirm_email_change,
        mfa::enroll,
        mfa::confirm,
        mfa::disable,
        mfa::regenerate,
        passkeys::register_options,
        passkeys::register,
        passkeys::list,
        passkeys::remove,
        passkeys::login_options,
        passkeys::login,
        pages::account::verify_email_page,
        pages::account::verify_email_form,
        pages::account::reset_password_page,
        pages::account::reset_password_form,
        pages::passkeys::passkeys_page,
        handlers::me,
        handlers::sessions,
        handlers::delete_session,
        handlers::jwks,
        handlers::server_metadata,
        handlers::healthz,
        handlers::readyz,
    ),
    components(schemas(User, Problem, FieldError)),
    modifiers(&BearerSchemes, &CommonResponses),
    tags(
        (name = "auth", description = "Registration, login, refresh and logout"),
        (name = "users", description = "The signed-in user and their sessions"),
        (name = "account", description = "Proving the address, password reset and change, email change"),
        (name = "mfa", description = "Second factors: an authenticator app (TOTP) and recovery codes"),
        (name = "passkeys", description = "Passkeys (WebAuthn): registering, listing and removing them; signing in with one is under `auth`"),
        (name = "pages", description = "The HTML pages authd serves: those the emailed links open (when `mail.link_base_url` is not set), where a GET shows a page and changes nothing and its form's POST does the change; and `/ui/passkeys`, whose script calls the JSON API"),
        (name = "keys", description = "The public signing keys and the server metadata, for services that verify authd's tokens"),
        (name = "operations", description = "Health checks"),
    )
)]
pub struct ApiDoc;

struct BearerSchemes;

impl Modify for BearerSchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, what) in [
            ("access_token", "Access token from /login or /login/otp"),
            (
                "challenge_token",
                "Challenge token from /login when otp_required is true",
            ),
        ] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("JWT")
                        .description(Some(what))
                        .build(),
                ),
            );
        }
    }
}

/// What a route may answer because of the middleware and the extractors, not the handler:
/// documented here once instead of on each handler (a handler's own description of a status
/// wins). Every operation gets 408 (`request_timeout`) and 500 (`internal_error`). One with a
/// JSON body also gets 400 (`malformed_request`), 413 (`payload_too_large`), 415
/// (`unsupported_media_type`) and 422 (`validation_failed`: the JSON has the wrong shape); one
/// that needs a bearer token gets 401 (`invalid_token`). Every response gets the
/// `X-Request-Id` header; 401 on a bearer route `WWW-Authenticate`; 429 and 503 `Retry-After`.
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            for operation in [&mut item.get, &mut item.post, &mut item.delete]
                .into_iter()
                .flatten()
            {
                add_common_responses(operation);
            }
        }
    }
}

fn add_common_responses(operation: &mut Operation) {
    let form_body = operation
        .request_body
        .as_ref()
        .is_some_and(|body| matches!(body, RefOr::T(body) if body.content.contains_key(FORM)));
    let has_body = operation.request_body.is_some() && !form_body;
    let needs_token = operation
        .security
        .as_ref()
        .is_some_and(|schemes| !schemes.is_empty());
    let mut common = vec![
        (
            "408",
            "The request did not arrive or finish in time (`request_timeout`)",
        ),
        (
            "500",
            "A bug; the body carries no internal text (`internal_error`)",
        ),
    ];
    if has_body {
        common.extend([
            (
                "400",
                "The body is not valid JSON, or is empty (`malformed_request`)",
            ),
            ("413", "Body larger than 64 KiB (`payload_too_large`)"),
            (
                "415",
                "Body is not JSON (`unsupported_media_type`): send `Content-Type: application/json`",
            ),
            (
                "422",
                "The JSON is not an object of the documented shape, or a field is invalid \
                 (`validation_failed`, see `errors`)",
            ),
        ]);
    }
    if form_body {
        common.extend([
            ("413", "Form larger than 64 KiB (`payload_too_large`)"),
            (
                "415",
                "Body is not a form (`unsupported_media_type`): send `application/x-www-form-urlencoded`",
            ),
        ]);
    }
    if needs_token {
        common.push((
            "401",
            "Missing, malformed, expired or wrong kind of bearer token (`invalid_token`)",
        ));
    }
    let responses = &mut operation.responses.responses;
    for (status, description) in common {
        responses
            .entry(status.to_owned())
            .or_insert_with(|| problem_response(description));
    }
    for (status, response) in responses.iter_mut() {
        let RefOr::T(response) = response else {
            continue;
        };
        response
            .headers
            .insert("X-Request-Id".to_owned(), request_id_header());
        match status.as_str() {
            "401" if needs_token => {
                response
                    .headers
                    .insert("WWW-Authenticate".to_owned(), www_authenticate_header());
            }
            "429" | "503" => {
                response
                    .headers
                    .insert("Retry-After".to_owned(), retry_after_header());
            }
            _ => {}
        }
    }
}

/// The media type of the pages' forms.
pub(super) const FORM: &str = "application/x-www-form-urlencoded";

/// An error response: problem details, `application/problem+json`.
fn problem_response(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            super::error::PROBLEM_JSON,
            Content::new(Some(Ref::from_schema_name("Problem"))),
        )
        .into()
}

fn header(schema_type: Type, description: &str) -> RefOr<Header> {
    RefOr::T(
        HeaderBuilder::new()
            .schema(Some(ObjectBuilder::new().schema_type(schema_type)))
            .description(Some(description))
            .build(),
    )
}

fn request_id_header() -> RefOr<Header> {
    header(
        Type::String,
        "The request's id: the client's `X-Request-Id` if it is at most 128 printable \
         characters, otherwise a generated UUID. Every log line of the request carries it.",
    )
}

fn www_authenticate_header() -> RefOr<Header> {
    header(
        Type::String,
        "On `invalid_token`: `Bearer realm=\"authd\"`, with `error=\"invalid_token\"` and an \
         `error_description` when a token was sent (RFC 6750)",
    )
}

fn retry_after_header() -> RefOr<Header> {
    header(
        Type::Integer,
        "Seconds to wait before retrying (on `rate_limited` and `unavailable`)",
    )
}

/// The document as pretty JSON with a trailing newline: exactly what `openapi.json` holds.
pub fn openapi_json() -> String {
    let mut json = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serialises");
    json.push('\n');
    json
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `authd --version`, the OpenAPI `info.version` and the newest release in CHANGELOG.md are
    /// one version: `make release` moves them together.
    #[test]
    fn release_versions_agree() {
        let version = env!("CARGO_PKG_VERSION");
        let doc: serde_json::Value = serde_json::from_str(&openapi_json()).unwrap();
        assert_eq!(doc["info"]["version"], version);
        let newest = include_str!("../../CHANGELOG.md")
            .lines()
            .filter_map(|line| line.strip_prefix("## ["))
            .filter_map(|rest| rest.split_once(']').map(|(v, _)| v))
            .find(|v| *v != "Unreleased");
        assert_eq!(newest, Some(version), "CHANGELOG.md's newest release");
    }

    /// Every operation documents each status that the middleware, the extractors and the
    /// error mapping can answer for it, errors as problem+json with the headers they carry.
    #[test]
    fn every_operation_documents_every_status_it_can_answer() {
        let doc: serde_json::Value = serde_json::from_str(&openapi_json()).unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let responses = operation["responses"].as_object().unwrap();
                let has_body = operation.get("requestBody").is_some();
                let needs_token = operation
                    .get("security")
                    .and_then(|s| s.as_array())
                    .is_some_and(|s| !s.is_empty());
                let link_page = ["/verify-email", "/reset-password"].contains(&path.as_str());
                let page = link_page || path.starts_with("/ui/");
                let mut expected = vec!["200", "408", "500"];
                if path == "/register" || path == "/passkeys/register" {
                    expected[0] = "201";
                }
                if path == "/logout" || path == "/password/change" || method == "delete" {
                    expected[0] = "204";
                }
                if ["/email/verify/resend", "/password/forgot", "/email/change"]
                    .contains(&path.as_str())
                {
                    expected[0] = "202";
                }
                if link_page {
                    // Behind the per-address limit; a form's size and type are checked.
                    expected.extend(["400", "429"]);
                    if has_body {
                        expected.extend(["413", "415", "503"]);
                    }
                } else if has_body {
                    // Every body route but logout is behind the per-address limit, and each
                    // may hash a password or query the database (but the two whose work comes
                    // after the answer).
                    expected.extend(["400", "413", "415", "422"]);
                    if !["/email/verify/resend", "/password/forgot"].contains(&path.as_str()) {
                        expected.push("503");
                    }
                    if path != "/logout" {
                        expected.push("429");
                    }
                }
                if needs_token {
                    expected.extend(["401", "503"]);
                }
                for status in expected {
                    assert!(responses.contains_key(status), "{method} {path}: {status}");
                }
                for (status, response) in responses {
                    let what = format!("{method} {path} {status}");
                    let headers = &response["headers"];
                    assert!(
                        headers.get("X-Request-Id").is_some(),
                        "{what}: X-Request-Id"
                    );
                    if status == "204" {
                        assert!(response.get("content").is_none(), "{what}: no body");
                        continue;
                    }
                    let content = response["content"].as_object().unwrap();
                    if page && content.contains_key("text/html") {
                        // A page, whatever its status (the form's errors are pages too).
                        continue;
                    }
                    if status.starts_with('2') {
                        assert!(content.contains_key("application/json"), "{what}: JSON");
                        continue;
                    }
                    assert_eq!(
                        content.keys().collect::<Vec<_>>(),
                        [super::super::error::PROBLEM_JSON],
                        "{what}: problem+json only"
                    );
                    assert_eq!(
                        content[super::super::error::PROBLEM_JSON]["schema"]["$ref"],
                        "#/components/schemas/Problem",
                        "{what}: a Problem"
                    );
                    if status == "429" || status == "503" {
                        assert!(headers.get("Retry-After").is_some(), "{what}: Retry-After");
                    }
                    if status == "401" && needs_token {
                        assert!(headers.get("WWW-Authenticate").is_some(), "{what}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_password_and_code_routes_document_the_second_factor_lock() {
        let doc: serde_json::Value = serde_json::from_str(&openapi_json()).unwrap();
        for path in ["/login", "/login/otp"] {
            let description = doc["paths"][path]["post"]["responses"]["429"]["description"]
                .as_str()
                .unwrap();
            assert!(description.contains("second_factor_locked"), "{path}");
        }
    }
}
