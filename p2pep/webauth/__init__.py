"""Sign-in for P2PEP's web pages: the household portal and the operator console.

Small pieces, each usable alone:

* :mod:`.passwords`: argon2id hashing (argon2-cffi) and the rules a password must meet;
* :mod:`.names`: what an account name may be (a username or an e-mail address);
* :mod:`.ratelimit`: a sliding-window limiter with bounded memory (sign-in, registration, pairing);
* :mod:`.hosts`: the Host header check (allowed hosts from settings);
* :mod:`.store`: accounts and server-side sessions in SQLite (:class:`p2pep.sqlitedb.Database`);
* :mod:`.web`: all of it as aiohttp middlewares and the sign-in routes (:class:`WebAuth`).

Invariants the pieces keep together: a session cookie is random (256 bits), HttpOnly,
SameSite=Strict, and only its SHA-256 is stored; every POST/PUT/PATCH/DELETE carries a CSRF
token bound to the session (before sign-in: to a pre-session cookie); a page or API that is
not explicitly public answers nothing without a session; errors are ``{"error": ...}`` JSON.
"""
