//! A recursive-descent parser for the label selector grammar.
//!
//! Token rules and error texts mirror `k8s.io/apimachinery/pkg/labels/selector.go` (its
//! `Lexer` and `Parser`), so the two accept the same language.

use super::{Requirement, SelectorError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok {
    Ident,
    Bang,
    Eq,
    DoubleEq,
    NotEq,
    In,
    NotIn,
    Open,
    Close,
    Comma,
    Gt,
    Lt,
    End,
}

#[derive(Clone, Copy, Debug)]
struct Token<'a> {
    tok: Tok,
    lit: &'a str,
    at: usize,
}

fn is_special(c: char) -> bool {
    matches!(c, '=' | '!' | '(' | ')' | ',' | '>' | '<')
}

fn lex(input: &str) -> Vec<Token<'_>> {
    let mut out = Vec::new();
    let bytes = input.as_bytes();
    let mut i = 0;
    while i < input.len() {
        let c = input[i..].chars().next().expect("i is a char boundary");
        if c.is_whitespace() {
            i += c.len_utf8();
            continue;
        }
        let start = i;
        if is_special(c) {
            // The longest special symbol wins: `!=` and `==` before `!` and `=`.
            let two = bytes.get(i + 1).copied();
            let (tok, len) = match (c, two) {
                ('!', Some(b'=')) => (Tok::NotEq, 2),
                ('=', Some(b'=')) => (Tok::DoubleEq, 2),
                ('!', _) => (Tok::Bang, 1),
                ('=', _) => (Tok::Eq, 1),
                ('(', _) => (Tok::Open, 1),
                (')', _) => (Tok::Close, 1),
                (',', _) => (Tok::Comma, 1),
                ('>', _) => (Tok::Gt, 1),
                _ => (Tok::Lt, 1),
            };
            i += len;
            out.push(Token {
                tok,
                lit: &input[start..i],
                at: start,
            });
            continue;
        }
        while i < input.len() {
            let c = input[i..].chars().next().expect("i is a char boundary");
            if c.is_whitespace() || is_special(c) {
                break;
            }
            i += c.len_utf8();
        }
        let lit = &input[start..i];
        let tok = match lit {
            "in" => Tok::In,
            "notin" => Tok::NotIn,
            _ => Tok::Ident,
        };
        out.push(Token {
            tok,
            lit,
            at: start,
        });
    }
    out.push(Token {
        tok: Tok::End,
        lit: "",
        at: input.len(),
    });
    out
}

struct Parser<'a> {
    tokens: Vec<Token<'a>>,
    pos: usize,
}

fn err(tok: Token<'_>, expected: &str) -> SelectorError {
    SelectorError::new(format!("found '{}', expected: {expected}", tok.lit), tok.at)
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Token<'a> {
        self.tokens[self.pos]
    }

    fn next(&mut self) -> Token<'a> {
        let t = self.tokens[self.pos];
        if t.tok != Tok::End {
            self.pos += 1;
        }
        t
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        let mut t = self.next();
        let negated = t.tok == Tok::Bang;
        if negated {
            t = self.next();
        }
        if t.tok != Tok::Ident {
            return Err(err(t, "identifier"));
        }
        let key = t.lit.to_string();
        validate(super::validate_label_key(&key), &key, t.at, "key")?;
        if negated {
            return Ok(Requirement::DoesNotExist(key));
        }
        if matches!(self.peek().tok, Tok::End | Tok::Comma) {
            return Ok(Requirement::Exists(key));
        }
        let op = self.next();
        match op.tok {
            Tok::In | Tok::NotIn => {
                let values = self.values()?;
                Ok(if op.tok == Tok::In {
                    Requirement::In(key, values)
                } else {
                    Requirement::NotIn(key, values)
                })
            }
            Tok::Eq | Tok::DoubleEq | Tok::NotEq => {
                let value = self.exact_value()?;
                Ok(if op.tok == Tok::NotEq {
                    Requirement::NotEquals(key, value)
                } else {
                    Requirement::Equals(key, value)
                })
            }
            Tok::Gt | Tok::Lt => {
                let v = self.next();
                if v.tok != Tok::Ident {
                    return Err(err(v, "identifier"));
                }
                let n = v.lit.parse::<i64>().map_err(|_| {
                    SelectorError::new(
                        format!(
                            "for 'Gt', 'Lt' operators, the value must be an integer: {}",
                            v.lit
                        ),
                        v.at,
                    )
                })?;
                Ok(if op.tok == Tok::Gt {
                    Requirement::GreaterThan(key, n)
                } else {
                    Requirement::LessThan(key, n)
                })
            }
            _ => Err(err(op, "in, notin, =, ==, !=, gt, lt")),
        }
    }

    fn exact_value(&mut self) -> Result<String, SelectorError> {
        let t = self.peek();
        match t.tok {
            Tok::End | Tok::Comma => Ok(String::new()),
            Tok::Ident => {
                self.next();
                validate(super::validate_label_value(t.lit), t.lit, t.at, "value")?;
                Ok(t.lit.to_string())
            }
            _ => Err(err(t, "identifier")),
        }
    }

    fn values(&mut self) -> Result<Vec<String>, SelectorError> {
        let open = self.next();
        if open.tok != Tok::Open {
            return Err(SelectorError::new(
                format!("found '{}' expected: '('", open.lit),
                open.at,
            ));
        }
        let mut values: Vec<String> = Vec::new();
        let mut push = |v: &str| {
            if !values.iter().any(|x| x == v) {
                values.push(v.to_string());
            }
        };
        match self.peek().tok {
            Tok::Close => {
                // `()` is the set holding the empty string, as upstream's parser reads it
                // (found by fuzzing: it used to be an empty set, so `x in (,)` printed as
                // `x in ()` and read back as something else).
                self.next();
                return Ok(vec![String::new()]);
            }
            Tok::Ident | Tok::Comma => {}
            _ => return Err(err(self.peek(), "',', ')' or identifier")),
        }
        // `(a,,b)` and `(,a)` mean the empty string is one of the values, as upstream.
        let mut expect_value = true;
        loop {
            let t = self.next();
            match t.tok {
                Tok::Ident if expect_value => {
                    validate(super::validate_label_value(t.lit), t.lit, t.at, "value")?;
                    push(t.lit);
                    expect_value = false;
                }
                Tok::Comma => {
                    if expect_value {
                        push("");
                    }
                    expect_value = true;
                }
                Tok::Close => {
                    if expect_value {
                        push("");
                    }
                    values.sort();
                    return Ok(values);
                }
                _ => return Err(err(t, "',' or ')'")),
            }
        }
    }
}

fn validate(
    result: Result<(), String>,
    lit: &str,
    at: usize,
    what: &str,
) -> Result<(), SelectorError> {
    result.map_err(|why| SelectorError::new(format!("invalid label {what}: \"{lit}\": {why}"), at))
}

pub(super) fn parse(input: &str) -> Result<Vec<Requirement>, SelectorError> {
    let mut p = Parser {
        tokens: lex(input),
        pos: 0,
    };
    let mut out = Vec::new();
    loop {
        let t = p.peek();
        match t.tok {
            Tok::End => return Ok(out),
            Tok::Ident | Tok::Bang => {
                let r = p.requirement().map_err(|e| {
                    SelectorError::new(format!("unable to parse requirement: {e}"), e.offset())
                })?;
                out.push(r);
                let t = p.next();
                match t.tok {
                    Tok::End => return Ok(out),
                    Tok::Comma => {
                        let n = p.peek();
                        if !matches!(n.tok, Tok::Ident | Tok::Bang) {
                            return Err(err(n, "identifier after ','"));
                        }
                    }
                    _ => return Err(err(t, "',' or 'end of string'")),
                }
            }
            _ => return Err(err(t, "!, identifier, or 'end of string'")),
        }
    }
}
