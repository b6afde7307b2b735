//! Routes the runbooks name whose capability is not built yet. They authenticate like the real
//! thing and then answer 501 `not_implemented`, never fake data.

use crate::api::extract::Auth;
use crate::api::problem::Problem;
use crate::auth::Scope;

pub async fn approvals(auth: Auth) -> Problem {
    match auth.require(Scope::Read) {
        Ok(_) => Problem::not_implemented("checkpoint approvals"),
        Err(p) => p,
    }
}
