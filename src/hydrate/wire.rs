//! What an S3 store's answers say, for the messages of both the listing and
//! download side (`s3`) and the conditional writes (`cond`): the error code
//! of an XML error body and a readable reason for a transport failure.
//! Nothing of a body but its code is ever shown.

/// The `<Code>` of an S3 XML error body; the rest of the body is never shown.
pub fn error_code(body: &str) -> Option<&str> {
    let start = body.find("<Code>")? + "<Code>".len();
    let len = body[start..].find("</Code>")?;
    let code = body[start..start + len].trim();
    (!code.is_empty()
        && code.len() <= 64
        && code.chars().all(|c| c.is_ascii_alphanumeric() || c == '.'))
    .then_some(code)
}

pub fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    let text = e.to_string();
    match e.kind() {
        K::ConnectionRefused => "connection refused".into(),
        K::TimedOut | K::WouldBlock => "timed out".into(),
        _ if text.contains("lookup address") || text.contains("resolve") => {
            format!("name not resolvable: {text}")
        }
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_reduced_to_their_code() {
        let body = "<?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code><StringToSign>AWS4-HMAC</StringToSign></Error>";
        assert_eq!(error_code(body), Some("SignatureDoesNotMatch"));
        assert_eq!(error_code("<Code>evil value</Code>"), None);
        assert_eq!(error_code("not xml"), None);
    }
}
