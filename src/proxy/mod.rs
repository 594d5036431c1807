//! The OpenAI front door (in progress).

use tiny_http::Request;

use crate::pool::Pool;
use crate::reply::ApiError;

pub struct Proxy;

impl Proxy {
    pub fn handle(&self, rq: Request, pool: &Pool) {
        let _ = pool;
        let _ = rq.respond(ApiError::NoReadyChild.reply("proxy not built yet"));
    }
}
