//! The one place where a server decides who may call what (SPEC §9.3): a
//! tower layer in front of every service, mapping the gRPC method path to
//! the role it needs. No handler checks anything itself.
//!
//! Refusals happen before the request reaches a service, so an answer
//! never depends on whether a file or block exists.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{BoxFuture, Either, Ready, ready};

use super::tokens::{Role, TokenTable, presented};

/// The role a method needs, by gRPC path (`/package.Service/Method`).
/// Anything not listed (a method added later and not classed here, or a
/// path no service has) needs `admin`: refusing is the safe default.
const ROLES: &[(&str, Role)] = &[
    ("/surfstore.BlockStore/GetBlock", Role::User),
    ("/surfstore.BlockStore/PutBlock", Role::User),
    ("/surfstore.BlockStore/HasBlocks", Role::User),
    ("/surfstore.BlockStore/PutBlocks", Role::User),
    ("/surfstore.BlockStore/GetBlocks", Role::User),
    ("/surfstore.MetaStore/GetFileInfoMap", Role::User),
    ("/surfstore.MetaStore/UpdateFile", Role::User),
    ("/surfstore.MetaStore/GetBlockStoreAddr", Role::User),
    ("/surfstore.RaftSurfstore/GetFileInfoMap", Role::User),
    ("/surfstore.RaftSurfstore/UpdateFile", Role::User),
    ("/surfstore.RaftSurfstore/GetBlockStoreAddr", Role::User),
    // Continuous sync's change notices (SPEC §9.5): what a user may read.
    ("/surfstore.MapWatch/WatchFileInfoMap", Role::User),
    ("/surfstore.RaftSurfstore/AppendEntries", Role::Peer),
    // Election and snapshot RPCs (SPEC §9.1, §9.2), under the names they
    // are added with.
    ("/surfstore.RaftSurfstore/RequestVote", Role::Peer),
    ("/surfstore.RaftSurfstore/PreVote", Role::Peer),
    ("/surfstore.RaftSurfstore/InstallSnapshot", Role::Peer),
];

/// The role the method at `path` needs.
pub fn required_role(path: &str) -> Role {
    ROLES
        .iter()
        .find(|(p, _)| *p == path)
        .map_or(Role::Admin, |&(_, role)| role)
}

/// Every method path [`required_role`] classes below admin, with its role
/// (for tests that walk the whole table).
pub fn classed_methods() -> &'static [(&'static str, Role)] {
    ROLES
}

/// Why a call is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No token, or one the server does not know.
    Unauthenticated,
    /// A known token whose role may not call the method.
    Denied {
        /// The token's role.
        role: Role,
        /// The role the method needs.
        needed: Role,
    },
}

impl From<Refusal> for tonic::Status {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Unauthenticated => tonic::Status::unauthenticated(
                "missing or unknown token: send authorization: Bearer <token> \
                 with a token the server knows",
            ),
            Refusal::Denied { role, needed } => tonic::Status::permission_denied(format!(
                "a {role} token may not call this method (it needs {needed})"
            )),
        }
    }
}

/// Decides whether a request with `headers` may call `path`.
pub fn check(tokens: &TokenTable, path: &str, headers: &http::HeaderMap) -> Result<(), Refusal> {
    let holder = presented(headers)
        .and_then(|token| tokens.holder(token))
        .ok_or(Refusal::Unauthenticated)?;
    let needed = required_role(path);
    if holder.role.may(needed) {
        tracing::debug!(path, holder = %holder.name, role = %holder.role, "call allowed");
        Ok(())
    } else {
        tracing::debug!(path, holder = %holder.name, role = %holder.role, "call denied");
        Err(Refusal::Denied {
            role: holder.role,
            needed,
        })
    }
}

/// The layer: with no token table (no `--auth-tokens`), every call passes
/// as before.
#[derive(Debug, Clone, Default)]
pub struct AuthLayer {
    tokens: Option<Arc<TokenTable>>,
}

impl AuthLayer {
    /// Checks every call against `tokens`, or none when `None`.
    pub fn new(tokens: Option<TokenTable>) -> Self {
        Self {
            tokens: tokens.map(Arc::new),
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

/// The service [`AuthLayer`] wraps around the server's routes.
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    tokens: Option<Arc<TokenTable>>,
}

type HttpResponse = http::Response<tonic::body::Body>;

impl<S, B> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = HttpResponse>,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = S::Error;
    type Future = Either<
        BoxFuture<'static, Result<HttpResponse, S::Error>>,
        Ready<Result<HttpResponse, S::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let refused = self
            .tokens
            .as_deref()
            .and_then(|tokens| check(tokens, request.uri().path(), request.headers()).err());
        match refused {
            None => Either::Left(Box::pin(self.inner.call(request))),
            Some(refusal) => Either::Right(ready(Ok(tonic::Status::from(refusal).into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::tokens::{append_token, fresh_token};

    #[test]
    fn every_role_gets_what_the_spec_lists_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let tokens: Vec<(Role, String)> = [Role::User, Role::Peer, Role::Admin]
            .into_iter()
            .map(|role| {
                let token = fresh_token().unwrap();
                append_token(&path, role, role.name(), &token).unwrap();
                (role, token)
            })
            .collect();
        let table = TokenTable::load(&path).unwrap();
        let headers = |token: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(
                http::header::AUTHORIZATION,
                format!("Bearer {token}").parse().unwrap(),
            );
            h
        };
        let crash = "/surfstore.RaftSurfstore/Crash";
        let append = "/surfstore.RaftSurfstore/AppendEntries";
        let get = "/surfstore.BlockStore/GetBlock";
        let outcome = |role: Role, path: &str| {
            let token = &tokens.iter().find(|(r, _)| *r == role).unwrap().1;
            check(&table, path, &headers(token))
        };
        assert_eq!(outcome(Role::User, get), Ok(()));
        assert_eq!(outcome(Role::Peer, append), Ok(()));
        assert_eq!(outcome(Role::Admin, crash), Ok(()));
        assert_eq!(outcome(Role::Admin, get), Ok(()));
        assert_eq!(
            outcome(Role::User, crash),
            Err(Refusal::Denied {
                role: Role::User,
                needed: Role::Admin
            })
        );
        assert!(outcome(Role::Peer, get).is_err());
        assert!(outcome(Role::User, append).is_err());
        assert_eq!(
            check(&table, get, &http::HeaderMap::new()),
            Err(Refusal::Unauthenticated)
        );
        assert_eq!(
            check(&table, get, &headers("sst_unknown")),
            Err(Refusal::Unauthenticated)
        );
        assert_eq!(required_role("/surfstore.BlockStore/Unheard"), Role::Admin);
    }
}
