//! The ext_authz policy file: one directive a line, `#` starts a comment.
//!
//! ```text
//! # Rules below belong to namespace `shop` (unless they say otherwise).
//! namespace shop
//! require /shop.v1.Shop/*         viewer
//! require /shop.v1.Shop/Delete    owner
//! require /api/orders/**          editor
//! require /api/orders/**          viewer  methods=GET,HEAD
//! require /api/admin/**           owner   namespace=platform
//! public  /healthz
//! public  /grpc.health.v1.Health/*
//! default deny                    # or: default public, default viewer [namespace=…]
//! header  name       x-apitoken-name
//! header  uid        x-apitoken-uid
//! header  namespace  x-apitoken-namespace
//! header  role       x-apitoken-role
//! strip-authorization yes         # remove the bearer token before the upstream
//! ```
//!
//! Patterns and their precedence are [`super::pattern`]'s; among the rules
//! of the best pattern, the one whose `methods=` names the request's method
//! wins, else the one without `methods=`, else the request is refused (a
//! pattern whose rules all name other methods allows no other). Every problem is
//! reported as `FILE:LINE: problem`; the file is bounded
//! ([`MAX_POLICY_BYTES`], [`MAX_RULES`], [`MAX_LINE_LEN`], and
//! [`super::MAX_PATTERN_LEN`] per pattern).

use std::{collections::HashMap, fmt};

use super::{AccessPolicy, MethodRoutes, PathTable, Pattern, Route, UpstreamHeaders};
use crate::{Role, name::Namespace};

/// Largest policy file.
pub const MAX_POLICY_BYTES: usize = 256 * 1024;
/// Most rules (`require` and `public` lines).
pub const MAX_RULES: usize = 1000;
/// Longest line.
pub const MAX_LINE_LEN: usize = 1024;
/// Longest upstream header name.
pub const MAX_HEADER_NAME: usize = 64;
/// Most methods in one `methods=` option.
pub const MAX_METHODS: usize = 16;
/// Longest method name.
pub const MAX_METHOD_LEN: usize = 16;

/// Headers that a policy may not use for the caller's identity.
const RESERVED_HEADERS: [&str; 10] = [
    "authorization",
    "host",
    "content-type",
    "content-length",
    "te",
    "connection",
    "transfer-encoding",
    "upgrade",
    "cookie",
    "x-forwarded-for",
];

/// Why a policy file was refused: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The file, as the operator named it.
    pub file: String,
    /// The line (1-based), or 0 for the file as a whole.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}:{}: {}", self.file, self.line, self.message)
        }
    }
}

impl std::error::Error for PolicyError {}

impl AccessPolicy {
    /// Parses the text of the policy file `file` (its name is only used in
    /// errors).
    pub fn parse(file: &str, text: &str) -> Result<AccessPolicy, PolicyError> {
        let whole = |message: String| PolicyError {
            file: file.to_owned(),
            line: 0,
            message,
        };
        if text.len() > MAX_POLICY_BYTES {
            return Err(whole(format!(
                "the file is {} bytes; at most {MAX_POLICY_BYTES}",
                text.len()
            )));
        }
        let mut parser = Parser::default();
        for (index, line) in text.lines().enumerate() {
            parser
                .line(index + 1, line)
                .map_err(|message| PolicyError {
                    file: file.to_owned(),
                    line: index + 1,
                    message,
                })?;
        }
        if parser.rules == 0 && parser.default.is_none() {
            return Err(whole(
                "no rule: add `require PATTERN ROLE`, `public PATTERN` or `default …` lines"
                    .to_owned(),
            ));
        }
        let names = parser.headers.all();
        for (index, name) in names.iter().enumerate() {
            if names[..index].contains(name) {
                return Err(whole(format!("header name `{name}` is used twice")));
            }
        }
        Ok(AccessPolicy {
            routes: parser.routes,
            rules: parser.rules,
            default: parser.default.map_or(Route::Deny, |(route, _)| route),
            headers: parser.headers,
            strip_authorization: parser.strip_authorization,
        })
    }
}

#[derive(Debug, Default)]
struct Parser {
    routes: PathTable<MethodRoutes>,
    /// `require` and `public` lines so far.
    rules: usize,
    /// The line of each pattern and method (`None`: every method), for
    /// duplicates.
    lines: HashMap<(Pattern, Option<String>), usize>,
    namespace: Option<Namespace>,
    default: Option<(Route, usize)>,
    headers: UpstreamHeaders,
    strip_authorization: bool,
}

impl Parser {
    fn line(&mut self, number: usize, line: &str) -> Result<(), String> {
        if line.len() > MAX_LINE_LEN {
            return Err(format!("the line is longer than {MAX_LINE_LEN} bytes"));
        }
        let content = line.split_once('#').map_or(line, |(before, _)| before);
        let words: Vec<&str> = content.split_whitespace().collect();
        let Some((directive, args)) = words.split_first() else {
            return Ok(());
        };
        match *directive {
            "namespace" => {
                let [id] = args else {
                    return Err("`namespace` takes one namespace id".to_owned());
                };
                self.namespace = Some(namespace(id)?);
                Ok(())
            }
            "require" => {
                let (pattern, rest) = args
                    .split_first()
                    .ok_or("`require` takes a pattern and a role: `require /pkg.Svc/* viewer`")?;
                let (role, options) = rest
                    .split_first()
                    .ok_or("`require` takes a role after the pattern (viewer, editor or owner)")?;
                let options = Options::parse(options)?;
                let route = self.protected(role, options.namespace)?;
                self.rule(number, pattern, route, options.methods)
            }
            "public" => {
                let (pattern, options) = args
                    .split_first()
                    .ok_or("`public` takes a pattern: `public /healthz`")?;
                let options = Options::parse(options)?;
                if options.namespace.is_some() {
                    return Err("`public` takes no `namespace=`: no token is needed".to_owned());
                }
                self.rule(number, pattern, Route::Public, options.methods)
            }
            "default" => {
                if let Some((_, first)) = &self.default {
                    return Err(format!("the default is already given on line {first}"));
                }
                let (what, options) = args
                    .split_first()
                    .ok_or("`default` takes `deny`, `public` or a role")?;
                let route = match *what {
                    "deny" | "public" if !options.is_empty() => {
                        return Err(format!("`default {what}` takes nothing more"));
                    }
                    "deny" => Route::Deny,
                    "public" => Route::Public,
                    role => {
                        let options = Options::parse(options)?;
                        if options.methods.is_some() {
                            return Err(
                                "`default` applies to every method: no `methods=`".to_owned()
                            );
                        }
                        self.protected(role, options.namespace)?
                    }
                };
                self.default = Some((route, number));
                Ok(())
            }
            "header" => {
                let [field, name] = args else {
                    return Err(
                        "`header` takes a field (name, uid, namespace or role) and a header name"
                            .to_owned(),
                    );
                };
                let name = header_name(name)?;
                let slot = match *field {
                    "name" => &mut self.headers.name,
                    "uid" => &mut self.headers.uid,
                    "namespace" => &mut self.headers.namespace,
                    "role" => &mut self.headers.role,
                    other => {
                        return Err(format!(
                            "`{}` is not a header field: use name, uid, namespace or role",
                            short(other)
                        ));
                    }
                };
                *slot = name;
                Ok(())
            }
            "strip-authorization" => {
                self.strip_authorization = match args {
                    [] | ["yes"] => true,
                    ["no"] => false,
                    _ => return Err("`strip-authorization` takes `yes` or `no`".to_owned()),
                };
                Ok(())
            }
            other => Err(format!(
                "unknown directive `{}`: use namespace, require, public, default, header or strip-authorization",
                short(other)
            )),
        }
    }

    /// The route of `role` in `namespace` (else the `namespace` line's).
    fn protected(&self, role: &str, namespace: Option<Namespace>) -> Result<Route, String> {
        let role = Role::parse(role).ok_or_else(|| {
            format!(
                "`{}` is not a role: use viewer, editor or owner",
                short(role)
            )
        })?;
        let namespace = namespace.or_else(|| self.namespace.clone()).ok_or(
            "no namespace for this rule: add `namespace=ID`, or a `namespace ID` line above",
        )?;
        Ok(Route::Protected { role, namespace })
    }

    fn rule(
        &mut self,
        number: usize,
        pattern: &str,
        route: Route,
        methods: Option<Vec<String>>,
    ) -> Result<(), String> {
        let pattern =
            Pattern::parse(pattern).map_err(|why| format!("`{}`: {why}", short(pattern)))?;
        if self.rules == MAX_RULES {
            return Err(format!("more than {MAX_RULES} rules"));
        }
        let keys: Vec<Option<String>> = match methods {
            None => vec![None],
            Some(methods) => methods.into_iter().map(Some).collect(),
        };
        for key in &keys {
            if let Some(first) = self.lines.get(&(pattern.clone(), key.clone())) {
                return Err(match key {
                    None => format!("`{pattern}` is already given on line {first}"),
                    Some(method) => {
                        format!("`{pattern}` for {method} is already given on line {first}")
                    }
                });
            }
        }
        if self.routes.get_mut(&pattern).is_none() {
            self.routes.insert(pattern.clone(), MethodRoutes::default());
        }
        let rules = self
            .routes
            .get_mut(&pattern)
            .ok_or("internal: a pattern just inserted is missing")?;
        for key in keys {
            rules.set(key.as_deref(), route.clone());
            self.lines.insert((pattern.clone(), key), number);
        }
        self.rules += 1;
        Ok(())
    }
}

/// The options of a rule: `namespace=ID`, `methods=GET,HEAD`.
#[derive(Debug, Default)]
struct Options {
    namespace: Option<Namespace>,
    methods: Option<Vec<String>>,
}

impl Options {
    fn parse(options: &[&str]) -> Result<Options, String> {
        let mut parsed = Options::default();
        for option in options {
            match option.split_once('=') {
                Some(("namespace", _)) if parsed.namespace.is_some() => {
                    return Err("`namespace=` is given twice".to_owned());
                }
                Some(("namespace", id)) => parsed.namespace = Some(namespace(id)?),
                Some(("methods", _)) if parsed.methods.is_some() => {
                    return Err("`methods=` is given twice".to_owned());
                }
                Some(("methods", list)) => parsed.methods = Some(methods(list)?),
                _ => {
                    return Err(format!(
                        "`{}` is not an option: use `namespace=ID` or `methods=GET,HEAD`",
                        short(option)
                    ));
                }
            }
        }
        Ok(parsed)
    }
}

/// `GET,HEAD`: at most [`MAX_METHODS`] distinct uppercase methods.
fn methods(list: &str) -> Result<Vec<String>, String> {
    let mut methods: Vec<String> = Vec::new();
    for method in list.split(',') {
        let valid = (1..=MAX_METHOD_LEN).contains(&method.len())
            && method.bytes().all(|b| b.is_ascii_uppercase());
        if !valid {
            return Err(format!(
                "`{}` is not an HTTP method: 1 to {MAX_METHOD_LEN} uppercase letters, e.g. `methods=GET,HEAD`",
                short(method)
            ));
        }
        if methods.iter().any(|known| known == method) {
            return Err(format!("{method} is listed twice"));
        }
        methods.push(method.to_owned());
    }
    if methods.len() > MAX_METHODS {
        return Err(format!("at most {MAX_METHODS} methods a rule"));
    }
    Ok(methods)
}

fn namespace(id: &str) -> Result<Namespace, String> {
    Namespace::new("namespace", id).map_err(|_| {
        format!(
            "`{}` is not a namespace id (3 to 50 of a-z, 0-9, `-`, starting with a letter)",
            short(id)
        )
    })
}

fn header_name(name: &str) -> Result<String, String> {
    let valid = (1..=MAX_HEADER_NAME).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        });
    if !valid {
        return Err(format!(
            "`{}` is not a header name: 1 to {MAX_HEADER_NAME} of a-z, 0-9, `-`, `_`, `.` (lowercase)",
            short(name)
        ));
    }
    if RESERVED_HEADERS.contains(&name)
        || name.starts_with("x-ratelimit-")
        || name.starts_with("grpc-")
    {
        return Err(format!("`{name}` is reserved: choose another header name"));
    }
    Ok(name.to_owned())
}

/// Input quoted back, short and escaped.
fn short(text: &str) -> String {
    crate::input::escape(crate::input::truncate(text, 48))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "\
# shop's routes
namespace shop
require /shop.v1.Shop/*       viewer
require /shop.v1.Shop/Delete  owner
require /api/orders/**        editor
require /api/admin/**         owner  namespace=platform
public  /healthz              # no token
default deny
header  name x-caller
strip-authorization yes
";

    fn protected(role: Role, namespace: &str) -> Route {
        Route::Protected {
            role,
            namespace: Namespace::new("ns", namespace).expect("namespace"),
        }
    }

    #[test]
    fn the_documented_example_parses() {
        let policy = AccessPolicy::parse("policy.txt", EXAMPLE).expect("parses");
        assert_eq!(
            policy.route("GET", "/shop.v1.Shop/List"),
            &protected(Role::Viewer, "shop")
        );
        assert_eq!(
            policy.route("GET", "/shop.v1.Shop/Delete"),
            &protected(Role::Owner, "shop")
        );
        assert_eq!(
            policy.route("GET", "/api/orders/7/items"),
            &protected(Role::Editor, "shop")
        );
        assert_eq!(
            policy.route("GET", "/api/admin/users"),
            &protected(Role::Owner, "platform")
        );
        assert_eq!(policy.route("GET", "/healthz"), &Route::Public);
        assert_eq!(policy.route("GET", "/elsewhere"), &Route::Deny);
        assert_eq!(policy.headers().name, "x-caller");
        assert_eq!(policy.headers().uid, "x-apitoken-uid");
        assert!(policy.strip_authorization());
        assert_eq!(policy.rules(), 5);
    }

    #[test]
    fn errors_name_file_line_and_problem() {
        for (text, line, why) in [
            (
                "namespace shop\nrequire /a/* admin\n",
                2,
                "`admin` is not a role",
            ),
            ("require /a/* viewer\n", 1, "no namespace for this rule"),
            ("namespace Shop\n", 1, "not a namespace id"),
            (
                "namespace shop\npublic /a\npublic /a\n",
                3,
                "already given on line 2",
            ),
            ("namespace shop\nrequire a/* viewer\n", 2, "starts with `/`"),
            ("namespace shop\nallow /a\n", 2, "unknown directive `allow`"),
            (
                "namespace shop\nheader name Authorization\n",
                2,
                "not a header name",
            ),
            ("namespace shop\nheader name authorization\n", 2, "reserved"),
            (
                "default deny\ndefault public\n",
                2,
                "already given on line 1",
            ),
            (
                "namespace shop\nrequire /a viewer tenant=x\n",
                2,
                "not an option",
            ),
        ] {
            let error = AccessPolicy::parse("/etc/apitoken/policy", text).expect_err(text);
            assert_eq!(error.line, line, "{text}: {error}");
            assert!(error.message.contains(why), "{text}: {error}");
            assert!(
                error
                    .to_string()
                    .starts_with(&format!("/etc/apitoken/policy:{line}: ")),
                "{error}"
            );
        }
        let error = AccessPolicy::parse("p", "# nothing\n").expect_err("empty");
        assert!(error.to_string().starts_with("p: no rule"), "{error}");
        let error = AccessPolicy::parse("p", "default public\nheader uid x-apitoken-name\n")
            .expect_err("same header twice");
        assert!(error.message.contains("used twice"), "{error}");
    }

    #[test]
    fn the_file_is_bounded() {
        let big = "#".repeat(MAX_POLICY_BYTES + 1);
        let error = AccessPolicy::parse("p", &big).expect_err("too big");
        assert!(error.message.contains("at most"), "{error}");
        let long = format!("public /{}\n", "a".repeat(MAX_LINE_LEN));
        assert_eq!(AccessPolicy::parse("p", &long).expect_err("long").line, 1);
        let many: String = (0..=MAX_RULES).map(|i| format!("public /p{i}\n")).collect();
        let error = AccessPolicy::parse("p", &many).expect_err("too many");
        assert_eq!(error.line, MAX_RULES + 1);
    }

    #[test]
    fn methods_choose_among_a_patterns_rules() {
        let text = "namespace shop\n\
                    require /api/items/** editor\n\
                    require /api/items/** viewer methods=GET,HEAD\n\
                    public  /docs/**      methods=GET\n\
                    default public\n";
        let policy = AccessPolicy::parse("p", text).expect("parses");
        assert_eq!(
            policy.route("GET", "/api/items/1"),
            &protected(Role::Viewer, "shop")
        );
        assert_eq!(
            policy.route("head", "/api/items/1"),
            &protected(Role::Viewer, "shop")
        );
        assert_eq!(
            policy.route("POST", "/api/items/1"),
            &protected(Role::Editor, "shop")
        );
        assert_eq!(policy.route("GET", "/docs/a"), &Route::Public);
        // Its only rule names GET: no other method passes (not the default).
        assert_eq!(policy.route("POST", "/docs/a"), &Route::Deny);
        assert_eq!(policy.route("POST", "/elsewhere"), &Route::Public);
        assert_eq!(policy.rules(), 3);
        for (text, why) in [
            (
                "namespace shop\npublic /a methods=GET\npublic /a methods=POST,GET\n",
                "for GET is already given on line 2",
            ),
            (
                "namespace shop\npublic /a methods=get\n",
                "not an HTTP method",
            ),
            (
                "namespace shop\npublic /a methods=GET,GET\n",
                "listed twice",
            ),
            (
                "namespace shop\ndefault viewer methods=GET\n",
                "every method",
            ),
            (
                "namespace shop\npublic /a namespace=shop\n",
                "no `namespace=`",
            ),
        ] {
            let error = AccessPolicy::parse("p", text).expect_err(text);
            assert!(error.message.contains(why), "{text}: {error}");
        }
    }

    #[test]
    fn default_routes() {
        let policy = AccessPolicy::parse("p", "default viewer namespace=team-a\n").expect("ok");
        assert_eq!(
            policy.route("GET", "/x"),
            &protected(Role::Viewer, "team-a")
        );
        let policy = AccessPolicy::parse("p", "default public\n").expect("ok");
        assert_eq!(policy.route("GET", "/x"), &Route::Public);
    }
}
