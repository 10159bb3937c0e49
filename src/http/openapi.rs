//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
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
    modifiers(&BearerSchemes),
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

/// The document as pretty JSON with a trailing newline: exactly what `openapi.json` holds.
pub fn openapi_json() -> String {
    let mut json = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serialises");
    json.push('\n');
    json
}
