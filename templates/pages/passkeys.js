// authd's passkeys page: sign in (password, then a code or a passkey when a second step is
// asked; or a passkey alone), then list, add and remove passkeys. Only authd's JSON API and
// the browser's WebAuthn; no library. Copy what you need.
//
// Rules this script keeps, and yours should too:
// - The tokens live in this script's memory only (never localStorage or sessionStorage, where
//   any script of the origin could read them later): closing the tab forgets them.
// - Whatever the server says is put in the page with textContent, never innerHTML.
// - An error is RFC 9457 problem+json: its `detail` is meant for the person; show it.
"use strict";

(() => {
  // The API is one level up from this page (`/ui/passkeys` -> `/`), so that the page keeps
  // working when a proxy serves authd under a path prefix.
  const api = (path) => new URL(`../${path}`, window.location.href).href;

  // The session: {access, refresh} once signed in; the second step's token meanwhile.
  let tokens = null;
  let challenge = null;

  const $ = (id) => document.getElementById(id);
  const status = $("status");

  function say(message, kind = "done") {
    status.textContent = message;
    status.className = kind;
  }

  function show(section) {
    for (const id of ["signed-out", "second-step", "signed-in"]) {
      $(id).hidden = id !== section;
    }
  }

  // An answer of authd that is not a success: its problem+json, when it has one.
  class Problem extends Error {
    constructor(status, body) {
      const detail = body && typeof body.detail === "string" ? body.detail : null;
      super(detail ?? `authd answered ${status}.`);
      this.status = status;
      this.code = body && typeof body.code === "string" ? body.code : null;
    }
  }

  // Calls authd: `method` on `path` with an optional bearer token and JSON body. The answer's
  // JSON (null for 204), or a Problem.
  async function call(method, path, { token, body } = {}) {
    const headers = { accept: "application/json" };
    if (token) headers.authorization = `Bearer ${token}`;
    const init = { method, headers, credentials: "omit", cache: "no-store" };
    if (body !== undefined) {
      headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(api(path), init);
    } catch {
      throw new Problem(0, { detail: "authd cannot be reached: check the connection and try again." });
    }
    if (response.status === 204) return null;
    let answer = null;
    try {
      answer = await response.json();
    } catch {
      // Not JSON (a proxy's error page): the status says enough.
    }
    if (!response.ok) throw new Problem(response.status, answer);
    return answer;
  }

  // Calls authd with the access token; an expired one is refreshed once and the call retried.
  // A change that needs a recent login (`reauthentication_required`) signs the person out, so
  // that they sign in again, as the problem's detail asks.
  async function authed(method, path, body) {
    try {
      return await call(method, path, { token: tokens.access, body });
    } catch (error) {
      if (!(error instanceof Problem)) throw error;
      if (error.code === "reauthentication_required") {
        forget();
        throw error;
      }
      if (error.code !== "invalid_token" || !tokens || !tokens.refresh) throw error;
      let renewed;
      try {
        renewed = await call("POST", "token/refresh", { body: { refresh_token: tokens.refresh } });
      } catch {
        forget();
        throw new Problem(401, { detail: "Your session has ended: sign in again." });
      }
      tokens = { access: renewed.access_token, refresh: renewed.refresh_token };
      return call(method, path, { token: tokens.access, body });
    }
  }

  // WebAuthn: authd sends the options as JSON; the browser parses them and serialises its
  // answer with toJSON(), which authd reads as it is.
  const webauthn =
    window.PublicKeyCredential &&
    typeof PublicKeyCredential.parseCreationOptionsFromJSON === "function" &&
    typeof PublicKeyCredential.parseRequestOptionsFromJSON === "function";

  async function createCredential(publicKey) {
    const credential = await navigator.credentials.create({
      publicKey: PublicKeyCredential.parseCreationOptionsFromJSON(publicKey),
    });
    return credential.toJSON();
  }

  async function getCredential(publicKey) {
    const credential = await navigator.credentials.get({
      publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(publicKey),
    });
    return credential.toJSON();
  }

  // A message for the person from whatever went wrong.
  function explain(error) {
    if (error instanceof Problem) return error.message;
    if (error && error.name === "NotAllowedError") {
      return "The passkey request was cancelled or timed out: try again.";
    }
    if (error && error.name === "InvalidStateError") {
      return "This authenticator already holds a passkey for your account.";
    }
    return "Something went wrong: try again.";
  }

  // Runs `work` while `button` is disabled; shows what went wrong in the status.
  async function act(button, work) {
    button.disabled = true;
    try {
      await work();
    } catch (error) {
      say(explain(error), "error");
    } finally {
      button.disabled = false;
    }
  }

  function forget() {
    tokens = null;
    challenge = null;
    $("password").value = "";
    $("otp").value = "";
    $("passkey-list").replaceChildren();
    $("whoami").textContent = "";
    show("signed-out");
  }

  // A successful sign-in's answer (from /login, /login/otp or /login/passkey).
  async function signedIn(answer, how) {
    tokens = { access: answer.access_token, refresh: answer.refresh_token };
    challenge = null;
    $("password").value = "";
    $("otp").value = "";
    const me = await authed("GET", "users/me");
    $("whoami").textContent = `Signed in as ${me.email}.`;
    await listPasskeys();
    show("signed-in");
    say(`Signed in ${how}.`);
  }

  function when(timestamp) {
    return timestamp ? new Date(timestamp).toLocaleString() : "never";
  }

  async function listPasskeys() {
    showPasskeys(await authed("GET", "passkeys"));
  }

  function showPasskeys({ passkeys }) {
    const items = passkeys.map((passkey) => {
      const item = document.createElement("li");
      item.className = "passkey";
      item.dataset.id = passkey.id;
      const name = document.createElement("strong");
      name.textContent = passkey.name;
      const about = document.createElement("span");
      about.textContent = ` added ${when(passkey.created_at)}, last used ${when(passkey.last_used_at)}`;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "remove";
      remove.textContent = "Remove";
      remove.setAttribute("aria-label", `Remove ${passkey.name}`);
      remove.addEventListener("click", () =>
        act(remove, async () => {
          await authed("DELETE", `passkeys/${encodeURIComponent(passkey.id)}`);
          // Removing a passkey ends the sessions that signed in with it: this one too, when
          // it did (GET /sessions names each session's passkey_id); the next call tells.
          try {
            await call("GET", "passkeys", { token: tokens.access }).then(showPasskeys);
            say(`Removed ${passkey.name}.`);
          } catch (error) {
            if (!(error instanceof Problem) || error.code !== "invalid_token") throw error;
            forget();
            say(`Removed ${passkey.name}. You had signed in with it, so this session has ended: sign in again.`);
          }
        }),
      );
      item.append(name, about, remove);
      return item;
    });
    $("passkey-list").replaceChildren(...items);
    $("no-passkeys").hidden = items.length > 0;
  }

  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    act($("login"), async () => {
      const answer = await call("POST", "login", {
        body: { email: $("email").value, password: $("password").value },
      });
      if (!answer.otp_required) return signedIn(answer, "with your password");
      challenge = answer.challenge_token;
      const methods = Array.isArray(answer.methods) ? answer.methods : [answer.second_factor];
      const passkey = webauthn && methods.includes("passkey");
      $("second-step-passkey").hidden = !passkey;
      show("second-step");
      const code =
        answer.second_factor === "totp"
          ? "Enter the code of your authenticator app"
          : "Enter the code we emailed you";
      say(passkey ? `${code}, or use a passkey.` : `${code}.`);
      $("otp").focus();
    });
  });

  $("otp-form").addEventListener("submit", (event) => {
    event.preventDefault();
    act($("otp-submit"), async () => {
      const answer = await call("POST", "login/otp", {
        token: challenge,
        body: { otp: $("otp").value.trim() },
      });
      await signedIn(answer, "with your code");
    });
  });

  $("second-step-passkey").addEventListener("click", () =>
    act($("second-step-passkey"), async () => {
      // Each ceremony is used once, failed or not: a new one for every try.
      const options = await call("POST", "login/passkey/options", { token: challenge, body: {} });
      const credential = await getCredential(options.publicKey);
      const answer = await call("POST", "login/passkey", {
        token: challenge,
        body: { ceremony: options.ceremony, credential },
      });
      await signedIn(answer, "with a passkey");
    }),
  );

  $("second-step-cancel").addEventListener("click", () => {
    forget();
    say("");
  });

  $("passkey-signin").addEventListener("click", () =>
    act($("passkey-signin"), async () => {
      // Discoverable: no account named, the authenticator offers the passkeys it holds.
      const options = await call("POST", "login/passkey/options", { body: {} });
      const credential = await getCredential(options.publicKey);
      const answer = await call("POST", "login/passkey", {
        body: { ceremony: options.ceremony, credential },
      });
      await signedIn(answer, "with a passkey");
    }),
  );

  $("register-form").addEventListener("submit", (event) => {
    event.preventDefault();
    act($("register-passkey"), async () => {
      const name = $("passkey-name").value.trim();
      if (!name) {
        say("Give the passkey a name, such as the device it is on.", "error");
        return;
      }
      const options = await authed("POST", "passkeys/register/options", {});
      const credential = await createCredential(options.publicKey);
      await authed("POST", "passkeys/register", { ceremony: options.ceremony, credential, name });
      $("passkey-name").value = "";
      await listPasskeys();
      say(`Added ${name}.`);
    });
  });

  $("sign-out").addEventListener("click", () =>
    act($("sign-out"), async () => {
      // End the session at authd too, so its refresh token is dead, not just forgotten here.
      const access = tokens && tokens.access;
      forget();
      if (access) await call("POST", "logout", { token: access }).catch(() => {});
      say("Signed out.");
    }),
  );

  // The buttons come disabled: they work only once this script runs.
  $("login").disabled = false;
  if (webauthn) {
    $("passkey-signin").disabled = false;
  } else {
    $("register-passkey").disabled = true;
    say("This browser cannot use passkeys here (it needs WebAuthn's JSON methods, and https or localhost).", "error");
  }
  show("signed-out");
})();
