use super::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn parses_every_operator() {
    let s = Selector::parse("a=1, b==2,c!=3,d in (x, y),e notin (z),f,!g,h>4,i<5").unwrap();
    assert_eq!(
        s.requirements(),
        &[
            Requirement::Equals("a".into(), "1".into()),
            Requirement::Equals("b".into(), "2".into()),
            Requirement::NotEquals("c".into(), "3".into()),
            Requirement::In("d".into(), vec!["x".into(), "y".into()]),
            Requirement::NotIn("e".into(), vec!["z".into()]),
            Requirement::Exists("f".into()),
            Requirement::DoesNotExist("g".into()),
            Requirement::GreaterThan("h".into(), 4),
            Requirement::LessThan("i".into(), 5),
        ]
    );
    assert_eq!(
        s.to_string(),
        "a=1,b=2,c!=3,d in (x,y),e notin (z),f,!g,h>4,i<5"
    );
}

#[test]
fn empty_selector_matches_everything() {
    let s = Selector::parse("  ").unwrap();
    assert!(s.is_everything());
    assert!(s.matches(&labels(&[])));
}

#[test]
fn matching_follows_kubernetes_semantics() {
    let pod = labels(&[
        ("app", "biz1"),
        ("zone", "prod"),
        ("version", "4.2"),
        ("n", "7"),
    ]);
    let yes = [
        "app=biz1,zone=prod",
        "version in (4.1,4.2)",
        "canary notin (true)",
        "!canary",
        "app",
        "n>6",
        "n<8",
        "x!=y",
    ];
    for s in yes {
        assert!(
            Selector::parse(s).unwrap().matches(&pod),
            "{s} should match"
        );
    }
    let no = [
        "app=biz1,zone=dev",
        "version notin (4.2)",
        "!app",
        "canary",
        "n>7",
        "app>1",
        "version in ()",
    ];
    for s in no {
        assert!(
            !Selector::parse(s).unwrap().matches(&pod),
            "{s} should not match"
        );
    }
}

#[test]
fn errors_read_like_the_api_server() {
    // Inputs and messages captured from kube-apiserver v1.34 (shared/fixtures/errors).
    let cases = [
        (
            "app===x",
            "unable to parse requirement: found '=', expected: identifier",
        ),
        (
            "app=bad value",
            "found 'value', expected: ',' or 'end of string'",
        ),
        (
            "app in (a",
            "unable to parse requirement: found '', expected: ',' or ')'",
        ),
        ("a,", "found '', expected: identifier after ','"),
        (
            ",a",
            "found ',', expected: !, identifier, or 'end of string'",
        ),
    ];
    for (input, message) in cases {
        assert_eq!(
            Selector::parse(input).unwrap_err().to_string(),
            message,
            "{input}"
        );
    }
    let e = Selector::parse("app=ok,-bad=1").unwrap_err();
    assert!(e.to_string().contains("invalid label key: \"-bad\""), "{e}");
    assert_eq!(e.offset(), 7);
}

#[test]
fn label_syntax() {
    assert!(validate_label_key("kubernetes.io/service-name").is_ok());
    assert!(validate_label_key("-bad-key-").is_err());
    assert!(validate_label_key("Bad.Prefix/x").is_err());
    assert!(validate_label_key(&"a".repeat(64)).is_err());
    assert!(validate_label_value("").is_ok());
    assert!(validate_label_value("bad value!").is_err());
    assert!(is_dns1123_subdomain("hello-world-1"));
    assert!(!is_dns1123_subdomain("Hello_World"));
}

/// Found by fuzzing (the input is kept in `fuzz/corpus/selector`): `()` is the set of the
/// empty string, as upstream, so every set prints to text that parses back to it.
#[test]
fn empty_value_sets_round_trip() {
    for text in ["von in(\n,)", "a in (,x)", "a notin (,)", "a in ()"] {
        let s: Selector = text.parse().unwrap();
        assert_eq!(s.to_string().parse::<Selector>().unwrap(), s, "{text}");
    }
    assert_eq!(
        "a in ()".parse::<Selector>().unwrap(),
        "a in (,)".parse::<Selector>().unwrap()
    );
    let unlabelled = Default::default();
    assert!(!"a in ()".parse::<Selector>().unwrap().matches(&unlabelled));
    assert!(
        "a notin ()"
            .parse::<Selector>()
            .unwrap()
            .matches(&unlabelled)
    );
}
