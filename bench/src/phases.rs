//! The phases of a run, one file each: every phase measures only when `--only` names it (or
//! no `--only` was given), and writes its figures into the run.

/// bcrypt verify on every core: the bound logins are measured against.
pub mod bound;
/// Many logins at once, past the hashing queue: refused at once with 503.
pub mod burst;
/// The paced `/users/me` load sent to the ceiling, idle and under the login storm.
pub mod control;
/// `POST /mfa/totp/enroll` with fresh logins, and what the QR code costs of it.
pub mod enroll;
/// The two-factor login flow per second.
pub mod flow;
/// `POST /password/forgot` for known and unknown addresses, alternating.
pub mod forgot;
/// `authd user import` of a million users (JSON Lines, again, CSV): rows/s and peak memory.
pub mod import;
/// `POST /login` per second at saturation.
pub mod login;
/// `POST /logout` latency.
pub mod logout;
/// Closed-loop `/users/me` on authd (`me`) and on the ceiling (`ceiling`), alternating.
pub mod me;
/// The paced `/users/me` under the login storm.
pub mod mixed;
/// Whole passkey sign-ins per second (options, assertion, sign-in), against password logins.
pub mod passkey;
/// The paced `/users/me` on an idle authd.
pub mod probe;
/// `POST /token/refresh` per second and latency.
pub mod refresh;
/// The paced `/users/me` under worst-case registrations.
pub mod register;
/// The cost of signing and verifying one access token, per algorithm.
pub mod tokens;
/// `POST /login/otp` with a wrong code of an authenticator app: the cost of a guess.
pub mod totp;
/// `POST /email/verify` with a wrong code: the cost of a guess.
pub mod verify;
