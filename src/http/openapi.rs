//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, Type};
use utoipa::{Modify, OpenApi};

use super::error::Problem;
use super::handlers;
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
        handlers::me,
        handlers::healthz,
        handlers::readyz,
    ),
    components(schemas(User, Problem, FieldError)),
    modifiers(&BearerSchemes, &CommonResponses),
    tags(
        (name = "auth", description = "Registration and login"),
        (name = "users", description = "The signed-in user"),
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

/// What every route may answer because of the middleware, not the handler: documented here
/// once instead of on each handler. Every operation gets 408 (`request_timeout`) and 500
/// (`internal_error`); one with a body also 413 (`payload_too_large`) and 415
/// (`unsupported_media_type`); every response gets the `X-Request-Id` header.
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            for operation in [&mut item.get, &mut item.post].into_iter().flatten() {
                add_common_responses(operation);
            }
        }
    }
}

fn add_common_responses(operation: &mut Operation) {
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
    if operation.request_body.is_some() {
        common.push(("413", "Body larger than 64 KiB (`payload_too_large`)"));
        common.push((
            "415",
            "Body is not JSON (`unsupported_media_type`): send `Content-Type: application/json`",
        ));
    }
    let responses = &mut operation.responses.responses;
    for (status, description) in common {
        responses.entry(status.to_owned()).or_insert_with(|| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    super::error::PROBLEM_JSON,
                    Content::new(Some(Ref::from_schema_name("Problem"))),
                )
                .into()
        });
    }
    let request_id = HeaderBuilder::new()
        .schema(Some(
            utoipa::openapi::ObjectBuilder::new().schema_type(Type::String),
        ))
        .description(Some(
            "The request's id: the client's `X-Request-Id` if it is at most 128 printable \
             characters, otherwise a generated UUID. Every log line of the request carries it.",
        ))
        .build();
    for response in responses.values_mut() {
        if let RefOr::T(response) = response {
            response
                .headers
                .insert("X-Request-Id".to_owned(), RefOr::T(request_id.clone()));
        }
    }
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

    #[test]
    fn every_operation_documents_what_the_middleware_can_answer() {
        let doc: serde_json::Value = serde_json::from_str(&openapi_json()).unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let responses = operation["responses"].as_object().unwrap();
                let mut expected = vec!["408", "500"];
                if operation.get("requestBody").is_some() {
                    expected.extend(["413", "415"]);
                }
                for status in expected {
                    assert!(responses.contains_key(status), "{method} {path}: {status}");
                }
                for (status, response) in responses {
                    assert!(
                        response["headers"].get("X-Request-Id").is_some(),
                        "{method} {path} {status}: no X-Request-Id"
                    );
                }
            }
        }
    }
}
