//! The proto3 canonical JSON mapping of the messages the command line shows,
//! written by hand: lowerCamelCase field names in proto field order, enums
//! as their names (numbers if unknown), timestamps as RFC 3339 in UTC with
//! 0, 3, 6 or 9 fractional digits, int64 as strings, maps as objects with
//! sorted keys. Fields at their default value (empty string, 0, unset time,
//! empty map) are left out, as grpcurl and protojson do; the lists of
//! `list` and `audit` are always present, even when empty.

use std::collections::HashMap;

use apitoken_proto::prost_types::Timestamp;
use apitoken_proto::v1::{
    self, ApiToken, AuditEvent, CreateApiTokenResponse, RegenerateApiTokenResponse,
    VerifyApiTokenResponse,
};

use crate::value::Value;

/// An object under construction.
#[derive(Debug, Default)]
struct Object(Vec<(String, Value)>);

impl Object {
    fn put(mut self, key: &str, value: Value) -> Self {
        self.0.push((key.to_owned(), value));
        self
    }

    fn string(self, key: &str, value: &str) -> Self {
        if value.is_empty() {
            self
        } else {
            self.put(key, Value::Str(value.to_owned()))
        }
    }

    fn boolean(self, key: &str, value: bool) -> Self {
        if value {
            self.put(key, Value::Bool(true))
        } else {
            self
        }
    }

    fn int32(self, key: &str, value: i32) -> Self {
        if value == 0 {
            self
        } else {
            self.put(key, Value::Int(value.into()))
        }
    }

    fn int64(self, key: &str, value: i64) -> Self {
        if value == 0 {
            self
        } else {
            self.put(key, Value::Str(value.to_string()))
        }
    }

    fn enumeration(self, key: &str, value: i32, name: Option<&str>) -> Self {
        match (value, name) {
            (0, _) => self,
            (_, Some(name)) => self.put(key, Value::Str(name.to_owned())),
            (number, None) => self.put(key, Value::Int(number.into())),
        }
    }

    fn timestamp(self, key: &str, value: Option<&Timestamp>) -> Self {
        match value {
            Some(time) => self.put(key, Value::Str(time.to_string())),
            None => self,
        }
    }

    fn map(self, key: &str, value: &HashMap<String, String>) -> Self {
        if value.is_empty() {
            return self;
        }
        let mut entries: Vec<_> = value
            .iter()
            .map(|(key, value)| (key.clone(), Value::Str(value.clone())))
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        self.put(key, Value::Map(entries))
    }

    fn message(self, key: &str, value: Option<Value>) -> Self {
        match value {
            Some(value) => self.put(key, value),
            None => self,
        }
    }

    fn build(self) -> Value {
        Value::Map(self.0)
    }
}

/// An `apitoken.v1.ApiToken`.
pub(crate) fn token(token: &ApiToken) -> Value {
    Object::default()
        .string("name", &token.name)
        .string("uid", &token.uid)
        .string("displayName", &token.display_name)
        .string("description", &token.description)
        .enumeration(
            "role",
            token.role,
            v1::Role::try_from(token.role).ok().map(|r| r.as_str_name()),
        )
        .map("labels", &token.labels)
        .timestamp("createTime", token.create_time.as_ref())
        .string("creator", &token.creator)
        .timestamp("expireTime", token.expire_time.as_ref())
        .enumeration(
            "state",
            token.state,
            v1::api_token::State::try_from(token.state)
                .ok()
                .map(|s| s.as_str_name()),
        )
        .timestamp("revokeTime", token.revoke_time.as_ref())
        .string("revoker", &token.revoker)
        .string("secretHint", &token.secret_hint)
        .timestamp("lastUseTime", token.last_use_time.as_ref())
        .int64("useCount", token.use_count)
        .string("etag", &token.etag)
        .timestamp("updateTime", token.update_time.as_ref())
        .int32("rateLimit", token.rate_limit)
        .string("lastUseIp", &token.last_use_ip)
        .timestamp(
            "previousSecretExpireTime",
            token.previous_secret_expire_time.as_ref(),
        )
        .message("limit", token.limit.as_ref().map(rate_limit))
        .boolean("interceptor", token.interceptor)
        .build()
}

/// An `apitoken.v1.RateLimit`.
pub(crate) fn rate_limit(limit: &v1::RateLimit) -> Value {
    let object = Object::default()
        .int64("requests", limit.requests)
        .enumeration(
            "window",
            limit.window,
            v1::rate_limit::Window::try_from(limit.window)
                .ok()
                .map(|w| w.as_str_name()),
        );
    if limit.unlimited {
        object.put("unlimited", Value::Bool(true)).build()
    } else {
        object.build()
    }
}

/// An `apitoken.v1.CreateApiTokenResponse`.
pub(crate) fn created(response: &CreateApiTokenResponse) -> Value {
    Object::default()
        .message("apiToken", response.api_token.as_ref().map(token))
        .string("secret", &response.secret)
        .build()
}

/// An `apitoken.v1.RegenerateApiTokenResponse`.
pub(crate) fn regenerated(response: &RegenerateApiTokenResponse) -> Value {
    Object::default()
        .message("apiToken", response.api_token.as_ref().map(token))
        .string("secret", &response.secret)
        .build()
}

/// An `apitoken.v1.VerifyApiTokenResponse`.
pub(crate) fn verified(response: &VerifyApiTokenResponse) -> Value {
    Object::default()
        .message("apiToken", response.api_token.as_ref().map(token))
        .int32("namespaceRateLimit", response.namespace_rate_limit)
        .timestamp("secretExpireTime", response.secret_expire_time.as_ref())
        .message(
            "namespaceLimit",
            response.namespace_limit.as_ref().map(rate_limit),
        )
        .build()
}

/// An `apitoken.v1.ListApiTokensResponse` holding every page fetched.
pub(crate) fn token_list(tokens: &[ApiToken], next_page_token: &str) -> Value {
    Object::default()
        .put("apiTokens", Value::List(tokens.iter().map(token).collect()))
        .string("nextPageToken", next_page_token)
        .build()
}

/// An `apitoken.v1.AuditEvent`.
pub(crate) fn event(event: &AuditEvent) -> Value {
    Object::default()
        .string("name", &event.name)
        .timestamp("eventTime", event.event_time.as_ref())
        .enumeration(
            "action",
            event.action,
            v1::audit_event::Action::try_from(event.action)
                .ok()
                .map(|a| a.as_str_name()),
        )
        .string("actor", &event.actor)
        .string("actorUid", &event.actor_uid)
        .string("resource", &event.resource)
        .string("resourceUid", &event.resource_uid)
        .string("peerAddress", &event.peer_address)
        .string("userAgent", &event.user_agent)
        .string("requestId", &event.request_id)
        .string("traceId", &event.trace_id)
        .map("details", &event.details)
        .build()
}

/// An `apitoken.v1.ListAuditEventsResponse` holding every page fetched.
pub(crate) fn event_list(events: &[AuditEvent], next_page_token: &str) -> Value {
    Object::default()
        .put(
            "auditEvents",
            Value::List(events.iter().map(event).collect()),
        )
        .string("nextPageToken", next_page_token)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::to_json;

    #[test]
    fn a_token_maps_like_protojson() {
        let token = ApiToken {
            name: "namespaces/team-a/apitokens/ci".into(),
            display_name: "CI".into(),
            role: v1::Role::Editor.into(),
            labels: [
                ("z".to_owned(), "1".to_owned()),
                ("a".to_owned(), "2".to_owned()),
            ]
            .into_iter()
            .collect(),
            create_time: Some(Timestamp {
                seconds: 1_767_225_600,
                nanos: 120_000_000,
            }),
            state: 99,
            use_count: 9_007_199_254_740_993,
            rate_limit: 60,
            ..Default::default()
        };
        assert_eq!(
            to_json(&super::token(&token)),
            r#"{
  "name": "namespaces/team-a/apitokens/ci",
  "displayName": "CI",
  "role": "ROLE_EDITOR",
  "labels": {
    "a": "2",
    "z": "1"
  },
  "createTime": "2026-01-01T00:00:00.120Z",
  "state": 99,
  "useCount": "9007199254740993",
  "rateLimit": 60
}
"#
        );
    }

    #[test]
    fn lists_are_present_even_when_empty() {
        assert_eq!(to_json(&token_list(&[], "")), "{\n  \"apiTokens\": []\n}\n");
        assert_eq!(
            to_json(&event_list(&[], "next")),
            "{\n  \"auditEvents\": [],\n  \"nextPageToken\": \"next\"\n}\n"
        );
    }
}
