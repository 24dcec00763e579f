"""Scrub secrets out of everything FluxRun sends to its server.

The failure *summary* is plaintext that leaves the app, so every header, URL, body, log line and
error message in it goes through a `Scrubber` first. The design follows sentry-python's
`EventScrubber` (a denylist of key names, values replaced by a marker) and Relay's PII rules
(value patterns for cards, bearer tokens, PEM keys, URL credentials), and is at least as strict as
both of their defaults:

* Values are replaced by `MASK` (``"[Filtered]"``), never deleted, so a reader can still see that
  a field was there and where the hole is.
* Key names are compared case-insensitively with separators normalised, so ``api_key``,
  ``api-key``, ``apiKey``, ``X-Api-Key`` and ``HTTP_X_API_KEY`` are all the same key.
* Scrubbing never raises: odd input (bytes, None, numbers, cycles, absurd nesting) comes back as
  something safe to print, because a scrubber that crashes would lose the failure it was guarding.

Key matching has three tiers (see `Scrubber.is_sensitive_key`):

1. `DEFAULT_DENYLIST` entries match as whole words of the key (``session`` matches
   ``user_session`` and ``X-Session``, ``card`` matches ``card_number`` but not ``discard``).
2. `SENSITIVE_SUBSTRINGS` match anywhere in the normalised key (``password`` matches
   ``db_password_v2``), except inside a few known harmless words (`BENIGN_KEY_FRAGMENTS`).
3. ``auth`` is special: it matches as a whole word, as a glued prefix (``authheader``) or suffix
   (``basicauth``), but never inside ``author``/``authority``/``authenticated``.

Decisions on false positives (documented because every one is a trade-off):

* ``author``, ``authority``, ``authored_at``, ``is_authenticated``: kept. Relay's regex would
  scrub them (it matches ``auth`` as a substring); a stack of git/CMS data where every author
  is ``[Filtered]`` is useless, and none of these ever hold a credential.
* ``tokenizer``/``tokenize*`` and LLM usage counters (``max_tokens``, ``prompt_tokens``,
  ``total_tokens``, ``token_count``, ``tokens_used``...): kept. They are counts or model names
  and appear in nearly every LLM request/response. Plain ``token``/``tokens``/``*_token`` are
  still masked.
* ``sessions_count``/``session_count``/``num_sessions``: kept (counts). Every other key with
  ``session`` in it is masked (stricter than Sentry, which only masks a few exact names).
* ``secretary``: kept. Every other ``secret`` is masked.
* ``cc`` is masked even though it is also an e-mail header: the addresses are PII anyway.
* ``None``, booleans and empty strings under a sensitive key are kept: "the token was missing"
  is often the bug, and none of them can be a secret.
* Cookie headers keep every cookie *name* and mask every *value*, whatever the name: cookie
  values are session material by nature. Set-Cookie keeps the standard attributes.
* URL userinfo is masked whole, username included (as Sentry does): ``https://TOKEN@host`` and
  ``x-access-token:TOKEN@`` put the secret in the username.
* Card numbers need a Luhn-valid 13-19 digit run with an issuer prefix 2-6, so 13-digit
  millisecond timestamps and ~90% of long order ids are kept.
* IBANs need a known country, that country's length and the mod-97 checksum, so random
  capitalised words and hashes are kept (1 in 97 shape-matching strings would pass the checksum
  alone).
* E-mail addresses are masked whole (the domain can name a customer). scp-style remotes
  (``git@github.com:org/repo``) and ``name@2x.png`` file names are kept.
* A secret written as prose ("wrong password hunter2", "the password is hunter2", "api key
  k9Qx") loses the word after the secret's name, unless that word is ordinary English
  ("password authentication failed" is kept). A real password that is an English word in that
  list ("password reset") is the price of readable messages.
* ``key``, ``code``, ``ticket``, ``hmac`` and ``oauth_verifier`` are secrets only as URL query
  parameters (Google API keys, OAuth authorization codes); a ``key`` field elsewhere is kept.
* Webhook URLs whose path is the credential (Slack, Discord, Teams, Zapier, IFTTT) keep the
  service's fixed prefix and lose the rest; Telegram bot tokens are masked by their shape.
* An AWS secret access key has no prefix: any run of exactly 40 base64 characters mixing upper
  case, lower case and digits is masked (hex digests, one-case ids and longer blobs are kept).

Cost: every pattern is linear in the text (no nested unbounded repetition; e-mail and IBAN
matches start at a rare character and scan a bounded window), checked by a test on 200 KB
adversarial strings. Scrubbing runs when a failure is sealed, off the request path.

What `Scrubber.text` cannot catch: a secret with no recognisable shape and no name in front of
it ("hunter2 was rejected"), and generic high-entropy strings (hashes and ids look the same).
"""

from __future__ import annotations

import datetime as _dt
import decimal
import json
import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Final
from urllib.parse import quote, unquote_plus, urlsplit, urlunsplit

from fluxrun.errors import ConfigError

__all__ = [
    "BENIGN_KEY_FRAGMENTS",
    "DEFAULT_DENYLIST",
    "MASK",
    "SENSITIVE_SUBSTRINGS",
    "Scrubber",
    "default_scrubber",
]

MASK: Final = "[Filtered]"
"""What a scrubbed value is replaced with (the marker Sentry uses, so tools already know it)."""

DEFAULT_DENYLIST: tuple[str, ...] = (
    # --- Relay PASSWORD_KEY_REGEX (relay-pii/src/regexes.rs), as copied into sentry-python ---
    "password",
    "passwd",
    "secret",
    "api_key",
    "apikey",
    "auth",  # whole word only, see the module docstring ("author" is kept)
    "credentials",
    "mysql_pwd",
    "privatekey",
    "private_key",
    "token",
    "session",
    "otp",  # newer Relay: ^otp$
    "two_factor",  # newer Relay: ^two[-_]factor$
    # --- sentry-python DEFAULT_DENYLIST (scrubber.py): framework names ---
    "csrftoken",  # Django
    "sessionid",  # Django
    "x_csrftoken",  # WSGI
    "set_cookie",  # WSGI
    "cookie",  # WSGI
    "authorization",  # WSGI
    "proxy_authorization",
    "x_api_key",
    "aiohttp_session",  # aiohttp
    "connect.sid",  # Express
    "csrf_token",  # Pyramid
    "csrf",
    "_csrf",  # Express
    "_csrf_token",  # Bottle
    "PHPSESSID",  # PHP
    "_session",  # Sanic
    "symfony",  # Symfony
    "user_session",  # Vue
    "_xsrf",  # Tornado
    "XSRF-TOKEN",  # Angular, Laravel
    # --- sentry-python DEFAULT_PII_DENYLIST (applied while send_default_pii is False) ---
    "x_forwarded_for",
    "x_real_ip",
    "ip_address",
    "remote_addr",
    # --- HTTP headers that carry credentials (OWASP Logging Cheat Sheet; vendor docs) ---
    "x_auth_token",
    "x_csrf_token",
    "x_xsrf_token",
    "x_access_token",
    "x_amz_security_token",  # AWS STS
    "x_goog_api_key",  # Google
    "ocp_apim_subscription_key",  # Azure API Management
    "x_hub_signature",  # GitHub webhooks
    "stripe_signature",  # Stripe webhooks
    "cookies",
    # --- common field names (OWASP Logging / Secrets Management cheat sheets) ---
    "pwd",
    "pass",
    "passphrase",
    "passcode",
    "pin",
    "client_secret",  # OAuth 2
    "access_token",  # OAuth 2
    "refresh_token",  # OAuth 2
    "id_token",  # OpenID Connect
    "code_verifier",  # OAuth PKCE
    "bearer",
    "jwt",
    "sid",
    "xsrf",
    "signature",
    "sig",  # Azure SAS, presigned URLs
    "dsn",  # database / Sentry DSNs embed credentials
    "connection_string",
    "account_key",  # Azure storage connection strings
    "shared_access_key",  # Azure Service Bus
    "encryption_key",
    "signing_key",
    "master_key",
    "secret_key",
    "access_key",
    "mfa_code",
    "totp",
    # --- payment and identity data (PCI DSS; OWASP) ---
    "card",
    "card_number",
    "cardnumber",
    "credit_card",
    "cc",
    "ccn",
    "cc_number",
    "cvv",
    "cvv2",
    "cvc",
    "cvc2",
    "csc",
    "iban",
    "ssn",
    "social_security_number",
)
"""Key names whose values are always masked. Matched as whole words, case/separator-insensitive."""

SENSITIVE_SUBSTRINGS: tuple[str, ...] = (
    # Strong words: no harmless English word contains them, so they match anywhere in the
    # normalised key (lower-case, separators removed). Short words like "auth", "card", "ssn"
    # ("classname", "businessname") and "pin" are deliberately not here; they match as words.
    "password",
    "passwd",
    "passphrase",
    "pwd",
    "secret",
    "token",
    "apikey",
    "session",
    "sessid",  # PHPSESSID, JSESSIONID-ish names glued together
    "cookie",
    "credential",
    "privatekey",
    "authorization",
    "creditcard",
    "cardnumber",
    "accesskey",
    "signingkey",
    "encryptionkey",
    "masterkey",
    "accountkey",
)
"""Fragments that make any normalised key sensitive, unless they sit inside a benign word."""

BENIGN_KEY_FRAGMENTS: tuple[str, ...] = (
    "tokeniz",  # tokenizer, tokenize, tokenization: NLP, not credentials
    # LLM usage counters (OpenAI / Anthropic / HF naming):
    "(?:max|min|prompt|completion|input|output|total|cached|reasoning|audio|num|remaining)tokens",
    "tokens?(?:count|used|usage|limit|remaining)",
    "sessions?(?:count|total)",
    "(?:num|total|active)sessions",
    "secretar(?:y|ies|iat)",
)
"""Regex fragments removed from a normalised key before `SENSITIVE_SUBSTRINGS` are searched."""

_MAX_DEPTH: Final = 32
_MAX_KEY_CACHE: Final = 4096

# --- key normalisation ---------------------------------------------------------------------------

_NON_ALNUM = re.compile(r"[^0-9a-z]+")
# camelCase / PascalCase / ACRONYMWord / digits -> words ("XApiKey" -> X, Api, Key)
_WORDS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
_SUBSTRING_RE = re.compile("|".join(SENSITIVE_SUBSTRINGS))
_BENIGN_RE = re.compile("|".join(BENIGN_KEY_FRAGMENTS))


def _normalise(key: str) -> str:
    """Lower-case and drop separators, so `X-Api-Key` and `x_api_key` compare equal."""
    return _NON_ALNUM.sub("", key.lower())


def _words(key: str) -> list[str]:
    """Split a key into lower-case words; `OAuth` stays one word so `OAuthProvider` is not `auth`."""
    return [w.lower() for w in _WORDS.findall(key.replace("OAuth", "Oauth"))]


def _auth_glued(norm: str) -> bool:
    """`auth` glued to another word (`authheader`, `basicauth`), but not author/authority/authent*."""
    if norm.endswith("auth"):
        return True
    return norm.startswith("auth") and not norm.startswith(("author", "authent"))


# --- value patterns (free text) -----------------------------------------------------------------

# PEM private key blocks (Relay @pemkey), also when truncated before the END line.
_PEM_RE = re.compile(
    r"(-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----)(.*?)"
    r"(-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|\Z)",
    re.DOTALL,
)
# Credentials in a URL authority (Relay @urlauth): scheme://user:password@host. Per RFC 3986
# "/", "?" and "#" cannot appear unencoded in userinfo; a raw "@" in a sloppy password is covered.
_URL_AUTH_RE = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.\-]*://)([^\s/?#@:]*)(?::([^\s/?#]*))?@")
# JWT / JWS: base64url(JSON header) always starts with "eyJ"; three dot-separated parts.
_JWT_RE = re.compile(r"(?<![A-Za-z0-9_\-])eyJ[A-Za-z0-9_\-]{2,}=*\.[A-Za-z0-9_\-]{2,}=*\.[A-Za-z0-9_\-]*=*")
# Provider key shapes (GitHub secret scanning partners / gitleaks rules).
_PROVIDER_RE = re.compile(
    r"\b(?:"
    r"sk-[A-Za-z0-9_\-]{20,}"  # OpenAI, Anthropic (sk-ant-...), DeepSeek...
    r"|(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{10,}"  # Stripe secret / restricted keys
    r"|whsec_[A-Za-z0-9+/=]{20,}"  # Stripe webhook secret
    r"|gh[pousr]_[A-Za-z0-9]{30,}"  # GitHub tokens
    r"|github_pat_[A-Za-z0-9_]{22,}"  # GitHub fine-grained PAT
    r"|glpat-[A-Za-z0-9_\-]{20,}"  # GitLab PAT
    r"|xox[abposr]-[A-Za-z0-9\-]{10,}"  # Slack tokens
    r"|xapp-[A-Za-z0-9\-]{10,}"  # Slack app-level token
    r"|(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}"  # AWS access key ids
    r"|AIza[0-9A-Za-z_\-]{35}"  # Google API key
    r"|ya29\.[0-9A-Za-z_\-]{20,}"  # Google OAuth access token
    r"|npm_[A-Za-z0-9]{36}"  # npm
    r"|pypi-AgE[A-Za-z0-9_\-]{50,}"  # PyPI
    r"|SG\.[A-Za-z0-9_\-]{16,}\.[A-Za-z0-9_\-]{16,}"  # SendGrid
    r"|hf_[A-Za-z0-9]{30,}"  # Hugging Face
    r"|shp(?:at|ss|ca|pa)_[a-fA-F0-9]{32}"  # Shopify
    r"|sntry[su]_[A-Za-z0-9+/=_]{30,}"  # Sentry org / user auth tokens
    r"|key-[0-9a-f]{32}"  # Mailgun
    r"|(?:bot)?\d{5,16}:A[A-Za-z0-9_\-]{30,40}(?![A-Za-z0-9_\-])"  # Telegram bot token (also as api.../bot<token>/)
    r")"
)
_AUTH_SCHEMES: Final = frozenset(
    {
        # IANA HTTP Authentication Scheme Registry
        "basic", "bearer", "concealed", "digest", "dpop", "gnap", "hoba", "mutual", "negotiate",
        "ntlm", "oauth", "privatetoken", "scram-sha-1", "scram-sha-256", "vapid",
        # common vendor schemes
        "aws4-hmac-sha256", "token", "apikey", "key", "sharedkey", "sharedkeylite", "ssws", "sentry",
    }
)  # fmt: skip
_SCHEME_VALUE_RE = re.compile(r"\s*([A-Za-z][A-Za-z0-9\-]{0,31})(\s+)\S")
# Relay @bearer: "Bearer <token>" in free text; Basic/Token/... too. Matched on the lower-cased
# text (literal alternation, fast) and mapped back; re.IGNORECASE is 4x slower.
_TEXT_SCHEME_LOW_RE = re.compile(r"(?:bearer|basic|token|negotiate|ntlm|dpop)(?=\s)")
_TEXT_SCHEME_ANYCASE_RE = re.compile(r"\b(?:bearer|basic|token|negotiate|ntlm|dpop)(?=\s)", re.IGNORECASE)
_SCHEME_CRED_RE = re.compile(r"\s+([A-Za-z0-9\-._~+/]+=*)")

# key=value, key: value, "key": "value", 'key': 'value', key="value", {\"key\": \"value\"}.
# Keys are found on the *reversed* text, where the separator comes first: the regex then starts
# with a two-character class, so Python's re skips ahead at C speed instead of trying a match at
# every letter (5x faster). Values are matched forward, only after a sensitive key.
_REV_KEY_RE = re.compile(r"[:=][ \t]*(?:[\"']\\?)?([\w.\-]{1,64})")
_QUOTED_VALUE = r""""(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|\\"(?:(?!\\").)*\\\""""
# after "=": up to whitespace or a delimiter (query strings, logfmt, cookies, CLI flags)
_EQ_VALUE_RE = re.compile(r"[ \t]*(" + _QUOTED_VALUE + r"""|[^\s&;,"'<>{})\]]+)""")
# after ":": to the end of the line or a delimiter ("password: correct horse battery staple",
# "Cookie: a=1; b=2" -- so ";" does not end it)
_COLON_VALUE_RE = re.compile(r"[ \t]*(" + _QUOTED_VALUE + r"""|[^\s,;"'<>{}\]][^\r\n,"<>{}\]]*)""")
# Gate for _PROVIDER_RE: the separator inside each key prefix (or the "A" of AWS/Google keys),
# with the prefix checked by fixed-width lookbehinds. Starting at a rare character lets Python's
# re skip ahead at C speed; the full provider regex (much slower per character) only runs on a hit.
_PROVIDER_GATE_RE = re.compile(
    r"[_\-.A](?:(?<=A)(?:KIA|SIA|GPA|IDA|ROA|NPA|NVA|IPA|Iza)"
    r"|(?<=sk-)|(?<=k_live_)|(?<=k_test_)|(?<=whsec_)|(?<=gh[pousr]_)|(?<=github_pat_)"
    r"|(?<=glpat-)|(?<=xox[abposr]-)|(?<=xapp-)|(?<=ya29\.)|(?<=npm_)|(?<=pypi-)|(?<=SG\.)|(?<=hf_)"
    r"|(?<=shp[a-z][a-z]_)|(?<=sntry[su]_)|(?<=key-)|(?<=\d:A))"
)

# Webhook URLs whose path *is* the credential: anyone holding the URL can post. The path after the
# service's fixed prefix is masked whole (gitleaks slack-webhook-url, discord-webhook; vendor docs).
# Telegram's api.telegram.org/bot<token>/ is caught by the bot-token shape in _PROVIDER_RE.
_WEBHOOK_RE = re.compile(
    r"((?:hooks\.slack\.com/(?:services|workflows|triggers)"
    r"|discord(?:app)?\.com/api/webhooks/\d{1,24}"
    r"|\.webhook\.office\.com/webhookb2"
    r"|outlook\.office(?:365)?\.com/webhook"
    r"|hooks\.zapier\.com/hooks/catch/\d{1,24}"
    r"|maker\.ifttt\.com/trigger/[^/\s?#]{1,128}/with/key"
    r")/)([^\s?#\"'<>]+)",
    re.IGNORECASE,
)
_WEBHOOK_GATE: Final = ("hooks.", "webhook", "ifttt")  # lower-case substrings, one of which each host has
# Query parameters that hold a credential although their name is no secret word: Google's `key=`, the
# OAuth authorization `code=` (RFC 6749 4.1.2), CAS `ticket=`, OAuth 1 `oauth_verifier=`, `hmac=`
# (Shopify). Only as URL query or fragment parameters: a `key` or `code` field elsewhere is ordinary.
_QUERY_SECRET_KEYS: Final = frozenset({"key", "code", "ticket", "oauthverifier", "hmac"})
_QUERY_PARAM_RE = re.compile(r"([?&;#](?:key|code|ticket|oauth_verifier|hmac)=)([^\s&;#\"'<>]+)", re.IGNORECASE)
# A secret written as prose after the word that names it ("wrong password hunter2", "the password is
# hunter2", "api key k9Qx2"). The next word is masked unless it is ordinary English (`_PROSE_WORDS`):
# "password authentication failed" stays readable.
_PROSE_SECRET_RE = re.compile(
    r"(?<![\w\-:<>/.@])(?:pass(?:word|wd|phrase|code)|secret(?:[ _\-]access)?(?:[ _\-]key)?|api[ _\-]?key"
    r"|access[ _\-]key)(?![\w\-])[ \t]+(?:(?:is|was|of)[ \t]+)?([\"'`]?)([^\s\"'`=:\[<>(){}][^\s\"'`=]*)(=(?=[^\s=]))?",
    re.IGNORECASE,
)
# The same names on the lower-cased text, without IGNORECASE (4x faster): the full rule runs only on a hit.
_PROSE_GATE_RE = re.compile(r"pass(?:word|wd|phrase|code)|secret|api[ _\-]?key|access[ _\-]key")
_PROSE_TRAILING: Final = ".,;:!?)]}>"
_PROSE_WORDS_TEXT: Final = """
    a an the is was are were be been being has have had do does did not no nor and or but for from to of in
    on at by with without as if then than that this these those it its must should shall may might can cannot
    could will would too so only also here there via using used please again now already just yet still
    authentication authorization auth login logon signin sign incorrect invalid wrong bad expired expires expiry
    required missing mismatch mismatched empty blank null none nil unset undefined unknown changed change changes
    reset recovery forgotten forgot updated update set accepted rejected refused denied failed fails failure error
    errors hash hashed hashing hasher hashes policy policies length complexity prompt manager file files store
    storage vault protected supplied provided given entered typed check checks checked verification verified verify
    validation validator strength weak strong rules rule history reuse reused attempt attempts based less encrypted
    encryption decryption rotation rotated revoked disabled enabled found match matches matched needed needs
    need limit value values header parameter param argument variable name names id type format reference key keys
    characters chars input form field fields text box token tokens contains contain doesn't isn't wasn't can't
    valid ok okay etc requirement requirements requires require too short long leaked exposed detected
    configured configuration settings setting lookup rotate"""
_PROSE_WORDS: Final = frozenset(_PROSE_WORDS_TEXT.split())
# E-mail addresses: found at each "@" (or "%40"), the domain matched forward with bounded labels, the local
# part scanned back at most 64 characters (RFC 5321), so no start position is tried twice.
_EMAIL_DOMAIN_RE = re.compile(r"(?:@|%40)((?:[A-Za-z0-9\-]{1,63}\.){1,10}[A-Za-z]{2,24})(?![A-Za-z0-9\-])")
_EMAIL_LOCAL: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-")
_FILE_SUFFIXES: Final = frozenset(
    ("png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "bmp", "js", "mjs", "css", "map", "json", "txt", "html",
     "htm", "xml", "pdf", "zip", "gz", "py", "pyc", "md", "yml", "yaml", "toml", "lock", "log", "csv")
)  # fmt: skip  # "icon@2x.png" is a file name, not an address
# IBANs (ISO 13616): country, two check digits, then the account, compact or printed in groups of four.
# Masked only when the country is known, the length is that country's, and the mod-97 checksum holds.
# (Starts at a capital and looks back afterwards: a leading lookbehind would be tried at every position.)
_IBAN_RE = re.compile(r"([A-Z][A-Z])(?<![A-Za-z0-9][A-Z][A-Z])\d\d(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])")
_IBAN_LENGTHS: Final = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
    "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25,
    "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18,
    "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33,
    "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip  # SWIFT IBAN registry
# AWS secret access keys: exactly 40 base64 characters with upper, lower and digits (hex digests have one
# case only). Key ids (AKIA...) are in _PROVIDER_RE; the secret is what matters.
_AWS_SECRET_RE = re.compile(r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/]{40}(?![A-Za-z0-9+/=])")

# <password>...</password> and <wsse:Password ...>...</wsse:Password>
_XML_RE = re.compile(r"<([A-Za-z_][\w.\-]*:)?([A-Za-z_][\w.\-]{0,63})(\s[^<>]*)?>([^<]+)</\1?\2\s*>")
# Payment card numbers (Relay @creditcard) and US Social Security numbers (Relay @usssn), in one
# pass because every regex pass costs time in proportion to the text.
# Cards: 13-19 digits, contiguous or in the printed groupings (4-4-4-4[-3], Amex 4-6-5, Diners
# 4-6-4), Luhn-checked in code. Only issuer prefixes 2-6 (Mastercard 2-series, Amex, JCB, Diners,
# Visa, Mastercard, Discover, Maestro, UnionPay): that keeps 13-digit millisecond timestamps
# (1.7e12) and many order ids out. SSNs: ddd-dd-dddd minus numbers the SSA never issues.
_NUMBER_RE = re.compile(
    r"[0-8](?<![\w.][0-8])(?:"
    r"(?<=[2-6])(?P<card>\d{12,18}|\d{3}([ \-])\d{4}\2\d{4}\2\d{1,7}|\d{3}([ \-])\d{6}\3\d{4,5})(?!\w)"
    r"|(?<!-[0-8])(?P<ssn>\d\d(?<!000)(?<!666)-(?!00)\d\d-(?!0000)\d{4})(?![\w\-])"
    r")"
)

_SET_COOKIE_ATTRS: Final = frozenset(
    {"path", "domain", "expires", "max-age", "secure", "httponly", "samesite", "partitioned", "priority"}
)
_URLISH_HEADERS: Final = frozenset({"referer", "location", "contentlocation", "origin", "xoriginalurl"})
_SAFE_SCALARS: Final = (
    int,
    float,
    complex,
    decimal.Decimal,
    _dt.date,
    _dt.time,
    _dt.timedelta,
    uuid.UUID,
)


_LUHN_DOUBLE: Final = str.maketrans("0123456789", "0246813579")  # 2*d, minus 9 if > 9


def _luhn_ok(digits: str) -> bool:
    """Luhn checksum: ~90% of random digit runs (order ids, phone numbers) fail it."""
    kept = sum(map(int, digits[-1::-2]))
    doubled = sum(map(int, digits[-2::-2].translate(_LUHN_DOUBLE)))
    return (kept + doubled) % 10 == 0


def _as_text(value: object) -> str:
    """Best-effort str for anything; never raises (bytes are decoded, failures become MASK)."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    try:
        return str(value)
    except Exception:
        return MASK


def _as_key(key: object) -> str | None:
    """A dict/header key as str, or None when it cannot name a field."""
    if isinstance(key, str):
        return key
    if isinstance(key, bytes | bytearray):
        return bytes(key).decode("latin-1")
    return None


def _charset(content_type: str) -> str:
    """The charset parameter of a Content-Type, defaulting to UTF-8."""
    m = re.search(r"charset\s*=\s*\"?([A-Za-z0-9._\-]+)", content_type, re.IGNORECASE)
    return m.group(1) if m else "utf-8"


class Scrubber:
    """Masks secrets in headers, URLs, bodies, structured data and free text.

    Immutable after construction and safe to share between threads: the only mutable state is a
    bounded cache of key verdicts.
    """

    __slots__ = (
        "_allow",
        "_cache",
        "_deny_norm",
        "_deny_words_re",
        "_extra_patterns",
        "_max_depth",
        "_n_deny",
        "_n_extra_keys",
        "_rev_cache",
    )

    def __init__(
        self,
        *,
        denylist: Iterable[str] | None = None,
        extra_keys: Iterable[str] = (),
        extra_patterns: Iterable[str | re.Pattern[str]] = (),
        allow_keys: Iterable[str] = (),
        max_depth: int = _MAX_DEPTH,
    ) -> None:
        """Build a scrubber.

        `denylist` replaces `DEFAULT_DENYLIST` (the whole-word key names); `extra_keys` adds to
        it. `SENSITIVE_SUBSTRINGS`, the auth rule and the value patterns always apply; use
        `allow_keys` (exact key names, separator-insensitive) to let a field through.
        `extra_patterns` are regexes whose whole match is masked in free text. Containers nested
        deeper than `max_depth` are masked whole (they cannot be checked cheaply).
        """
        base = DEFAULT_DENYLIST if denylist is None else tuple(_names(denylist, "denylist"))
        extra = tuple(_names(extra_keys, "extra_keys"))
        entries = [e for e in (*base, *extra) if _normalise(e)]
        self._n_deny = len(base)
        self._n_extra_keys = len(extra)
        self._deny_norm = frozenset(_normalise(e) for e in entries)
        phrases = sorted({" ".join(_words(e)) for e in entries} - {""}, key=len, reverse=True)
        self._deny_words_re: re.Pattern[str] | None = (
            re.compile(r"(?:^| )(?:" + "|".join(map(re.escape, phrases)) + r")(?= |$)") if phrases else None
        )
        self._allow = frozenset(n for n in (_normalise(a) for a in _names(allow_keys, "allow_keys")) if n)
        patterns: list[re.Pattern[str]] = []
        for p in [extra_patterns] if isinstance(extra_patterns, str | re.Pattern) else extra_patterns:
            if isinstance(p, re.Pattern):
                patterns.append(p)
            elif isinstance(p, str):
                try:
                    patterns.append(re.compile(p))
                except re.error as exc:
                    raise ConfigError(f"extra_patterns: {p!r} is not a valid regular expression: {exc}") from None
            else:
                raise ConfigError(f"extra_patterns must be strings or compiled regexes, got {type(p).__name__}")
        self._extra_patterns = tuple(patterns)
        if not isinstance(max_depth, int) or max_depth < 1:
            raise ConfigError(f"max_depth must be a positive int, got {max_depth!r}")
        self._max_depth = max_depth
        self._cache: dict[str, bool] = {}
        self._rev_cache: dict[str, bool] = {}  # verdicts keyed by the reversed key, for _kv

    @classmethod
    def from_config(cls, value: Scrubber | Iterable[str] | None) -> Scrubber:
        """Turn the `scrub=` argument of `fluxrun.init` into a Scrubber.

        None means the defaults; a list of names adds them as `extra_keys`. Scrubbing cannot be
        turned off (False is an error), because an unscrubbed summary would leak secrets.
        """
        if value is None:
            return default_scrubber()
        if isinstance(value, Scrubber):
            return value
        if isinstance(value, bool) or not isinstance(value, Iterable):
            raise ConfigError(
                f"scrub must be a fluxrun.scrub.Scrubber, a list of extra key names, or None; got {value!r}. "
                "Scrubbing cannot be disabled: use Scrubber(allow_keys=[...]) to let specific fields through."
            )
        return cls(extra_keys=value)

    def __repr__(self) -> str:
        # Counts only: user patterns may embed a literal secret they want masked.
        return (
            f"Scrubber(denylist={self._n_deny} keys, extra_keys={self._n_extra_keys}, "
            f"extra_patterns={len(self._extra_patterns)}, allow_keys={len(self._allow)})"
        )

    # --- keys ------------------------------------------------------------------------------------

    def is_sensitive_key(self, key: str) -> bool:
        """Whether a field/header/parameter named `key` holds a secret (see the module docstring)."""
        k = _as_key(key)
        if k is None:
            return False
        cached = self._cache.get(k)
        if cached is not None:
            return cached
        verdict = self._classify(k)
        if len(k) <= 128:
            if len(self._cache) >= _MAX_KEY_CACHE:
                self._cache.clear()
            self._cache[k] = verdict
        return verdict

    def _classify(self, key: str) -> bool:
        norm = _normalise(key)
        if not norm or norm in self._allow:
            return False
        if norm in self._deny_norm:
            return True
        if not _BENIGN_RE.sub("", norm):
            return False  # entirely a known harmless name: max_tokens, token_count, sessions_count
        if self._deny_words_re is not None and self._deny_words_re.search(" ".join(_words(key))):
            return True
        if _SUBSTRING_RE.search(_BENIGN_RE.sub(" ", norm)):
            return True
        return _auth_glued(norm)

    # --- headers ---------------------------------------------------------------------------------

    def header(self, name: str, value: str) -> str:
        """The value to show for header `name`; credentials masked, the auth scheme word kept."""
        try:
            v = value if isinstance(value, str) else _as_key(value) or _as_text(value)
            if not v:
                return v
            norm = _normalise(_as_key(name) or "")
            if norm == "cookie":
                return self._cookie(v)
            if norm in ("setcookie", "setcookie2"):
                return self._set_cookie(v)
            if self.is_sensitive_key(name):
                return _mask_keep_scheme(v)
            if norm in _URLISH_HEADERS:
                return self.url(v)
            return self.text(v)
        except Exception:
            return MASK

    def headers(self, pairs: Iterable[tuple[str, str]] | Mapping[str, str]) -> list[tuple[str, str]]:
        """Scrub a header list (a Mapping works too); malformed entries are dropped, not raised."""
        items: Iterable[object] = pairs.items() if isinstance(pairs, Mapping) else pairs
        out: list[tuple[str, str]] = []
        try:
            for item in items:
                if not isinstance(item, tuple | list) or len(item) != 2:
                    continue
                name, value = item[0], item[1]
                n = _as_key(name) or _as_text(name)
                v = value if isinstance(value, str) else _as_key(value) or _as_text(value)
                out.append((n, self.header(n, v)))
        except Exception:
            pass  # an iterable that fails half-way: keep what was scrubbed so far
        return out

    def _cookie(self, value: str) -> str:
        """Cookie: keep every cookie name, mask every value (cookie values are session material)."""
        parts = []
        for seg in value.split(";"):
            name, eq, val = seg.partition("=")
            if not eq:
                parts.append(MASK if seg.strip() else seg)
            else:
                parts.append(f"{name}={MASK}" if val.strip() else seg)
        return ";".join(parts)

    def _set_cookie(self, value: str) -> str:
        """Set-Cookie: mask the cookie value, keep standard attributes (Path, Expires...)."""
        first, *attrs = value.split(";")
        out = [self._cookie(first)]
        for attr in attrs:
            name, _eq, _val = attr.partition("=")
            out.append(attr if name.strip().lower() in _SET_COOKIE_ATTRS else self._cookie(attr))
        return ";".join(out)

    # --- URLs ------------------------------------------------------------------------------------

    def url(self, url: str) -> str:
        """Mask URL credentials (user and password, like Sentry), sensitive query/fragment
        parameters, and secret-shaped values anywhere in the path, query or fragment."""
        s = _as_text(url)
        if any(word in s.lower() for word in _WEBHOOK_GATE):
            s = _WEBHOOK_RE.sub(_webhook_repl, s)  # before splitting: the rule needs the host with the path
        try:
            parts = urlsplit(s)
        except ValueError:
            return self.text(s)
        try:
            netloc = parts.netloc
            if "@" in netloc:
                userinfo, _, hostport = netloc.rpartition("@")
                netloc = (f"{MASK}:{MASK}" if ":" in userinfo else MASK) + "@" + hostport
            path = self.text(parts.path)
            query = self._query(parts.query)
            fragment = self._query(parts.fragment) if "=" in parts.fragment else self.text(parts.fragment)
            out = urlunsplit((parts.scheme, netloc, path, query, fragment))
            if s.endswith("?") and not query and not fragment:
                out += "?"
            return out
        except Exception:
            return self.text(s)

    def _query(self, query: str) -> str:
        """Scrub an `a=1&b=2` string (query, fragment, form body) field by field."""
        if not query:
            return query
        pieces = re.split(r"([&;])", query)
        for i in range(0, len(pieces), 2):
            piece = pieces[i]
            raw_key, eq, raw_val = piece.partition("=")
            if not eq:
                decoded = unquote_plus(piece)
                scrubbed = self.text(decoded)
                if scrubbed != decoded:
                    pieces[i] = _requote(scrubbed)
                continue
            if not raw_val:
                continue
            key = unquote_plus(raw_key)
            if self.is_sensitive_key(key) or _normalise(key) in _QUERY_SECRET_KEYS:
                pieces[i] = f"{raw_key}={MASK}"
                continue
            decoded = unquote_plus(raw_val)
            scrubbed = self.text(decoded)
            if scrubbed != decoded:
                pieces[i] = f"{raw_key}={_requote(scrubbed)}"
        return "".join(pieces)

    # --- free text -------------------------------------------------------------------------------

    def text(self, value: str) -> str:
        """Mask secrets in free text: error messages, log lines, repr()s, header values.

        Each pass is gated by a cheap substring test, so ordinary text costs little.
        """
        try:
            return self._text(_as_text(value))
        except Exception:
            return MASK

    def _text(self, s: str) -> str:
        if len(s) < 4:
            return s
        if "PRIVATE KEY" in s:
            s = _PEM_RE.sub(lambda m: f"{m.group(1)}{MASK}{m.group(3)}", s)
        if "://" in s and "@" in s:
            s = _URL_AUTH_RE.sub(_url_auth_repl, s)
        low = s.lower()
        if any(word in low for word in _WEBHOOK_GATE):
            s = _WEBHOOK_RE.sub(_webhook_repl, s)
        if "eyJ" in s:
            s = _JWT_RE.sub(MASK, s)
        if _PROVIDER_GATE_RE.search(s):
            s = _PROVIDER_RE.sub(MASK, s)
        low = s.lower()
        if "bearer" in low or "basic" in low or "token" in low or "negotiate" in low or "ntlm" in low or "dpop" in low:
            s = _mask_schemes(s, low)
        if "=" in s or ":" in s:
            s = self._kv(s)
        if "</" in s:
            s = _XML_RE.sub(self._xml_repl, s)
        if "=" in s:
            s = _QUERY_PARAM_RE.sub(_query_param_repl, s)
        if "@" in s or "%40" in s:
            s = _mask_emails(s)
        if ("pass" in low or "secret" in low or "key" in low) and _PROSE_GATE_RE.search(low):
            s = _PROSE_SECRET_RE.sub(_prose_repl, s)  # after e-mails: "password jane@x.com" is masked whole
        s = _IBAN_RE.sub(_iban_repl, s)
        if len(s) >= 40:
            s = _AWS_SECRET_RE.sub(_aws_secret_repl, s)
        s = _NUMBER_RE.sub(_number_repl, s)
        for pattern in self._extra_patterns:
            s = pattern.sub(MASK, s)
        return s

    def _kv(self, s: str) -> str:
        """Mask the value of every `key=value`-like pair whose key is sensitive."""
        rev = s[::-1]
        cache = self._rev_cache
        hit = False
        for rev_key in _REV_KEY_RE.findall(rev):  # strings only: no Match objects on the fast path
            verdict = cache.get(rev_key)
            if verdict is None:
                verdict = self.is_sensitive_key(rev_key[::-1])
                if len(cache) >= _MAX_KEY_CACHE:
                    cache.clear()
                cache[rev_key] = verdict
            hit = hit or verdict
        if not hit:
            return s
        n = len(s)
        spans: list[tuple[int, int]] = []
        for m in _REV_KEY_RE.finditer(rev):
            if not self.is_sensitive_key(m.group(1)[::-1]):
                continue
            after = n - m.start()  # index just after the separator in `s`
            if s[after - 1] == "=":
                if s[after : after + 1] in ("=", ">"):
                    continue  # ==, => are not assignments
                value = _EQ_VALUE_RE.match(s, after)
            elif s.startswith("//", after):
                continue  # scheme://, not key: value
            else:
                value = _COLON_VALUE_RE.match(s, after)
            if value is not None:
                spans.append(value.span(1))
        if not spans:
            return s
        out: list[str] = []
        pos = 0
        for start, end in reversed(spans):  # found right to left
            if start < pos:
                continue  # inside a value already masked ("password: a=b")
            masked = _mask_value(s[start:end])
            if masked is None:
                continue
            out.append(s[pos:start])
            out.append(masked)
            pos = end
        out.append(s[pos:])
        return "".join(out)

    def _xml_repl(self, m: re.Match[str]) -> str:
        if not self.is_sensitive_key(m.group(2)) or m.group(4).strip() in ("", MASK):
            return m.group()
        return m.group()[: m.start(4) - m.start()] + MASK + m.group()[m.end(4) - m.start() :]

    # --- structured data -------------------------------------------------------------------------

    def data(self, value: object) -> object:
        """Return a scrubbed copy of `value` (the input is never mutated).

        Dict values under sensitive keys become MASK (whole sub-trees included, except None,
        bools and empty strings), strings go through `text`, lists of ``(name, value)`` pairs are
        treated like dicts. Cycles and anything deeper than `max_depth` become MASK.
        """
        try:
            return self._walk(value, 0, set())
        except Exception:
            return MASK

    def _walk(self, value: object, depth: int, path: set[int]) -> object:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, str):
            return self._text(value)
        if isinstance(value, _SAFE_SCALARS):
            return value
        if isinstance(value, bytes | bytearray | memoryview):
            return self._bytes_text(bytes(value))
        if depth >= self._max_depth:
            return MASK
        if isinstance(value, Mapping | list | tuple | set | frozenset):
            if id(value) in path:
                return MASK  # cycle
            path.add(id(value))
            try:
                return self._walk_container(value, depth + 1, path)
            finally:
                path.discard(id(value))
        try:
            return self._text(repr(value))
        except Exception:
            return MASK

    def _walk_container(
        self,
        value: Mapping[object, object] | list[object] | tuple[object, ...] | set[object] | frozenset[object],
        depth: int,
        path: set[int],
    ) -> object:
        if isinstance(value, Mapping):
            out: dict[object, object] = {}
            for k, v in list(value.items()):
                self._put(out, k, v, depth, path)
            return out
        if isinstance(value, list | tuple) and value and all(_is_pair(item) for item in value):
            # [("password", "x"), ...]: a multi-dict (form fields, header lists).
            pairs = [self._pair(item, depth, path) for item in value]
            return pairs if isinstance(value, list) else tuple(pairs)
        items = [self._walk(item, depth, path) for item in value]
        if isinstance(value, list):
            return items
        if isinstance(value, tuple):
            return tuple(items)
        try:
            return type(value)(items) if isinstance(value, frozenset) else set(items)
        except TypeError:
            return items

    def _put(self, out: dict[object, object], k: object, v: object, depth: int, path: set[int]) -> None:
        key_str = _as_key(k)
        new_key: object = self._text(k) if isinstance(k, str) else k
        if key_str is not None and self.is_sensitive_key(key_str) and _maskable(v):
            new_value: object = MASK
        else:
            new_value = self._walk(v, depth, path)
        n = 2
        candidate = new_key
        while candidate in out:  # two keys scrubbed to the same text
            candidate = f"{new_key}#{n}"
            n += 1
        out[candidate] = new_value

    def _pair(self, item: object, depth: int, path: set[int]) -> object:
        assert isinstance(item, list | tuple)
        name, v = item[0], item[1]
        assert isinstance(name, str)
        new_v = MASK if self.is_sensitive_key(name) and _maskable(v) else self._walk(v, depth, path)
        pair = (self._text(name), new_v)
        return list(pair) if isinstance(item, list) else pair

    # --- bodies ----------------------------------------------------------------------------------

    def body(self, content: bytes | str, content_type: str | None) -> bytes | str:
        """Scrub an HTTP body; returns the same type it was given (the original if unchanged).

        JSON is parsed, scrubbed with `data` and re-dumped; form bodies are scrubbed per field;
        multipart per part; anything else (and invalid JSON) goes through `text`. Bytes that
        are not valid in their charset are kept byte-for-byte around the masks.
        """
        try:
            ctype = _as_text(content_type).lower()
            if isinstance(content, str):
                return self._body_str(content, ctype)
            if isinstance(content, bytes | bytearray | memoryview):
                raw = bytes(content)
                charset = _charset(ctype)
                try:
                    decoded = raw.decode(charset, "surrogateescape")
                except (LookupError, UnicodeError):
                    charset = "utf-8"
                    decoded = raw.decode(charset, "surrogateescape")
                scrubbed = self._body_str(decoded, ctype)
                if scrubbed == decoded:
                    return raw
                return scrubbed.encode(charset, "surrogateescape")
            return self._text(_as_text(content))
        except Exception:
            return b"[Filtered]" if isinstance(content, bytes | bytearray | memoryview) else MASK

    def _body_str(self, s: str, ctype: str) -> str:
        mime = ctype.split(";", 1)[0].strip()
        stripped = s.lstrip()
        if mime.endswith(("/json", "+json")) or (not mime and stripped[:1] in ("{", "[")):
            try:
                parsed = json.loads(s)
            except (ValueError, RecursionError):
                return self._text(s)
            scrubbed = self.data(parsed)
            if scrubbed == parsed:
                return s
            try:
                return json.dumps(scrubbed, ensure_ascii=False)
            except (ValueError, TypeError, RecursionError):
                return self._text(s)
        if mime == "application/x-www-form-urlencoded":
            return self._query(s)
        if mime.startswith("multipart/"):
            m = re.search(r"boundary\s*=\s*\"?([^\";]+)\"?", ctype, re.IGNORECASE)
            if m:
                return self._multipart(s, m.group(1).strip())
        return self._text(s)

    def _multipart(self, s: str, boundary: str) -> str:
        """Mask whole parts named like a secret; run the rest through `text`."""
        # boundary was lower-cased with the content type; find it case-insensitively.
        parts = re.split("(--" + re.escape(boundary) + r"(?:--)?)", s, flags=re.IGNORECASE)
        for i in range(0, len(parts), 2):
            part = parts[i]
            head, sep, payload = part.partition("\r\n\r\n")
            if not sep:
                head, sep, payload = part.partition("\n\n")
            if not sep:
                parts[i] = self._text(part)
                continue
            name = re.search(r"\bname\s*=\s*\"([^\"]*)\"", head, re.IGNORECASE)
            if name and self.is_sensitive_key(name.group(1)) and payload.strip():
                tail = payload[len(payload.rstrip("\r\n")) :]
                parts[i] = head + sep + MASK + tail
            else:
                parts[i] = self._text(head) + sep + self._text(payload)
        return "".join(parts)

    def _bytes_text(self, raw: bytes) -> bytes:
        decoded = raw.decode("utf-8", "surrogateescape")
        scrubbed = self._text(decoded)
        return raw if scrubbed == decoded else scrubbed.encode("utf-8", "surrogateescape")


# --- helpers that do not need the scrubber's key lists ----------------------------------------


def _names(values: Iterable[str], what: str) -> list[str]:
    """Validate a list of key names; a lone string is one name, not a list of letters."""
    if isinstance(values, str):
        return [values]
    try:
        items = list(values)
    except TypeError:
        raise ConfigError(f"{what} must be a list of key names, got {type(values).__name__}") from None
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"{what} must contain only strings, got {item!r}")
    return items


def _is_pair(item: object) -> bool:
    return isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[0], str)


def _maskable(value: object) -> bool:
    """None, bools and "" say nothing secret (and "it was missing" is often the bug)."""
    return not (value is None or isinstance(value, bool) or value == "")


def _mask_keep_scheme(value: str) -> str:
    """`Bearer abc` -> `Bearer [Filtered]`; unknown schemes and bare values are masked whole."""
    m = _SCHEME_VALUE_RE.match(value)
    if m and m.group(1).lower() in _AUTH_SCHEMES:
        return value[: m.end(2)] + MASK
    return MASK


def _mask_value(raw: str) -> str | None:
    """Mask a captured value, keeping its quotes; None when there is nothing to mask."""
    quote_len = 0
    if raw.startswith('\\"'):
        quote_len = 2
    elif raw[:1] in ('"', "'") and len(raw) >= 2:
        quote_len = 1
    inner = raw[quote_len : len(raw) - quote_len] if quote_len else raw.rstrip()
    if not inner.strip() or inner.startswith(MASK[:-1]):
        return None
    m = _SCHEME_VALUE_RE.match(inner)
    if m and m.group(1).lower() in _AUTH_SCHEMES:
        rest = inner[m.end(2) :]
        if rest.startswith(MASK[:-1]):
            return None
        masked = inner[: m.end(2)] + MASK
    else:
        masked = MASK
    if quote_len:
        return raw[:quote_len] + masked + raw[len(raw) - quote_len :]
    return masked + raw[len(inner) :]


def _url_auth_repl(m: re.Match[str]) -> str:
    if m.group(3) is not None:
        return f"{m.group(1)}{MASK}:{MASK}@"
    return f"{m.group(1)}{MASK}@"


def _mask_schemes(s: str, low: str) -> str:
    """Mask the credential after `Bearer`/`Basic`/`Token`... in free text."""
    found = _TEXT_SCHEME_LOW_RE.finditer(low) if len(low) == len(s) else _TEXT_SCHEME_ANYCASE_RE.finditer(s)
    out: list[str] = []
    pos = 0
    for m in found:
        i = m.start()
        if i < pos or (i and (s[i - 1].isalnum() or s[i - 1] == "_")):
            continue
        cred = _SCHEME_CRED_RE.match(s, m.end())
        if cred is None:
            continue
        word = cred.group(1)
        after = s[cred.end(1) : cred.end(1) + 1]
        if word.endswith("=") and (after == '"' or after.isalnum()):
            continue  # an auth-param (WWW-Authenticate: Bearer realm="api"), not a credential
        # Keep prose ("Basic authentication failed", "Token expired"): a short, purely
        # alphabetic word is not a credential. Anything with digits/symbols, or 16+ chars, is.
        if word.isalpha() and len(word) < 16:
            continue
        out.append(s[pos : cred.start(1)])
        out.append(MASK)
        pos = cred.end(1)
    if not out:
        return s
    out.append(s[pos:])
    return "".join(out)


def _webhook_repl(m: re.Match[str]) -> str:
    return m.group(1) + MASK


def _query_param_repl(m: re.Match[str]) -> str:
    return m.group() if m.group(2).startswith(MASK[:-1]) else m.group(1) + MASK


def _prose_repl(m: re.Match[str]) -> str:
    """Mask the word after `password`/`api key`/... unless it is ordinary English or already masked."""
    value = m.group(2)
    core = value.rstrip(_PROSE_TRAILING)
    if not core or core.lower() in _PROSE_WORDS or m.group(3):
        return m.group()  # prose, or the key of a `Type='x'`-like pair (which `_kv` judged by its own key)
    start = m.start(2) - m.start()
    return m.group()[:start] + MASK + value[len(core) :]  # group 3 is empty here


def _mask_emails(s: str) -> str:
    """Replace each e-mail address with MASK; scp-style `git@host:path` and `icon@2x.png` are kept."""
    out: list[str] = []
    pos = 0
    for m in _EMAIL_DOMAIN_RE.finditer(s):
        at = m.start()
        start = at
        floor = max(pos, at - 64)
        while start > floor and s[start - 1] in _EMAIL_LOCAL:
            start -= 1
        while start < at and s[start] == ".":
            start += 1  # "...jane@x.com": a local part does not start with a dot
        if start == at:
            continue  # no local part: "@app.get", "[Filtered]@host"
        end = m.end()
        if s[end : end + 1] == ":" and s[end + 1 : end + 2].strip():
            continue  # git@github.com:org/repo.git
        if m.group(1).rsplit(".", 1)[1].lower() in _FILE_SUFFIXES:
            continue
        out.append(s[pos:start])
        out.append(MASK)
        pos = end
    if not out:
        return s
    out.append(s[pos:])
    return "".join(out)


def _iban_ok(compact: str) -> bool:
    """ISO 7064 mod 97-10: the country and check digits moved to the end, letters as 10-35, remainder 1."""
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _iban_repl(m: re.Match[str]) -> str:
    text = m.group()
    length = _IBAN_LENGTHS.get(m.group(1))
    if length is None:
        return text
    seen = 0
    end = 0
    for i, ch in enumerate(text):
        if ch != " ":
            seen += 1
            if seen == length:
                end = i + 1
                break
    if not end or text[end : end + 1] not in ("", " "):
        return text  # too short, or the country's length ends inside a group: not this IBAN
    if not _iban_ok(text[:end].replace(" ", "")):
        return text
    return MASK + text[end:]


def _aws_secret_repl(m: re.Match[str]) -> str:
    run = m.group()
    if run.isupper() or run.islower() or not any(c.isdigit() for c in run):
        return run  # one case only (hex digests, words) or no digit: not a random 240-bit key
    return MASK


def _number_repl(m: re.Match[str]) -> str:
    if m.group("ssn") is not None:
        return MASK
    digits = m.group().replace(" ", "").replace("-", "")
    if 13 <= len(digits) <= 19 and _luhn_ok(digits):
        return MASK
    return m.group()


def _requote(value: str) -> str:
    """Percent-encode a scrubbed query value, leaving the marker readable."""
    return quote(value, safe="[]:/@!$'()*,")


_DEFAULT: Scrubber | None = None


def default_scrubber() -> Scrubber:
    """The shared scrubber with the default rules (built once, safe to share)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Scrubber()
    return _DEFAULT
