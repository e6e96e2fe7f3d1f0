//! The admin API against Apache Kafka, moto S3/STS and, for STS refusals, the fault proxy:
//! validation, the connection test, setup documents, the digest keys, and the token. Status,
//! disable, enable and delete are in `admin_status.rs`.

use std::time::Duration;

use integration_tests::admin::{
    ADMIN_TOKEN, AdminIngest, CUSTOMER_ACCOUNT, VENDOR_ROLE, integration_path, settings,
};
use integration_tests::fault_proxy::{FaultProxy, Faults};
use integration_tests::fixtures::{
    IntegrationsTopic, aws_config, deny_on_objects, moto_endpoint, new_bucket, object_count,
    s3_client,
};
use integration_tests::plan::{Plan, Shape};
use integration_tests::services::TEST_TOKEN;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The fields named by a 422 answer.
fn problem_fields(answer: &Value) -> Vec<String> {
    answer["problems"]
        .as_array()
        .unwrap_or_else(|| panic!("no problems listed: {answer}"))
        .iter()
        .map(|p| p["field"].as_str().expect("field").to_owned())
        .collect()
}

async fn integrations_written(admin: &AdminIngest) -> usize {
    integration_tests::kafka::read_all(
        &integration_tests::kafka::brokers(),
        &admin.topics.integrations,
        Duration::from_secs(10),
    )
    .await
    .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_setting_is_named_and_nothing_is_saved() {
    let admin = AdminIngest::spawn(&moto_endpoint(), &[]).await;
    let long_prefix = "p".repeat(513);
    let cases: Vec<(&str, &str, Value)> = vec![
        ("aws_account_id", "aws_account_id", json!("12345")),
        ("aws_account_id", "aws_account_id", json!("12345678901x")),
        ("role_arn", "aws_account_id", json!("210987654321")),
        ("bucket", "bucket", json!("Bad_Bucket")),
        ("bucket", "bucket", json!("ab")),
        ("bucket", "bucket", json!("192.168.1.1")),
        ("bucket", "bucket", json!("logs..bucket")),
        ("region", "region", json!("Europe")),
        ("region", "region", json!("eu-west")),
        ("prefix", "prefix", json!("/leading")),
        ("prefix", "prefix", json!("a/../b")),
        ("prefix", "prefix", json!("a//b")),
        ("prefix", "prefix", json!(long_prefix)),
        ("prefix", "prefix", json!("with space")),
        (
            "role_arn",
            "role_arn",
            json!("arn:aws:iam::123456789012:user/Someone"),
        ),
        ("role_arn", "role_arn", json!("ActivityLogWriter")),
        ("compression", "compression", json!("lz4")),
        ("enabled", "enabled", json!("yes")),
        ("colour", "colour", json!("blue")),
        ("bucket", "bucket", Value::Null),
    ];
    for (field, key, value) in cases {
        let mut body = settings("acme-audit-logs");
        if value.is_null() {
            body.as_object_mut().expect("object").remove(key);
        } else {
            body[key] = value.clone();
        }
        for (route, (status, answer)) in [
            ("PUT", admin.put("acme", &body).await),
            ("POST test", admin.test("acme", &body).await),
        ] {
            assert_eq!(
                status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{route} {key}={value}: {answer}"
            );
            assert_eq!(
                problem_fields(&answer),
                [field],
                "{route} {key}={value}: {answer}"
            );
            assert!(
                answer["message"]
                    .as_str()
                    .expect("message")
                    .contains("nothing was saved")
            );
        }
    }

    let (status, answer) = admin.put("-acme", &settings("acme-audit-logs")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(problem_fields(&answer), ["tenant"]);
    let (status, answer) = admin
        .call(Method::PUT, &integration_path("acme"), None)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(problem_fields(&answer), ["body"]);

    // The events API's token does not open the admin API, nor does none.
    let http = reqwest::Client::new();
    for token in [Some(TEST_TOKEN), None] {
        let mut request = http.get(admin.ingest.url(&integration_path("acme")));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let status = request.send().await.expect("request").status();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "token {token:?}");
    }
    // Nor does the admin token post events.
    let status = http
        .post(admin.ingest.url("/v1/events"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/x-ndjson")
        .body("{}")
        .send()
        .await
        .expect("request")
        .status();
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    assert_eq!(admin.get("acme").await.0, StatusCode::NOT_FOUND);
    assert_eq!(integrations_written(&admin).await, 0, "nothing was saved");
}

/// Saves `acme`'s settings for `bucket`, expecting the connection test to fail at `step` with
/// AWS's `code`; returns the hint and the whole answer.
async fn refused(admin: &AdminIngest, bucket: &str, step: &str, code: &str) -> (String, Value) {
    let connected = admin.provisioned_settings("acme", bucket).await;
    let (status, answer) = admin.put("acme", &connected).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    let test = &answer["connection_test"];
    assert_eq!(
        (test["step"].as_str(), test["code"].as_str()),
        (Some(step), Some(code)),
        "{answer}"
    );
    let hint = test["hint"].as_str().unwrap_or_default().to_owned();
    (hint, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_test_failures_name_their_step_and_success_leaves_no_object() {
    let proxy = FaultProxy::start(&moto_endpoint()).await;
    let admin = AdminIngest::spawn(&proxy.url(), &[]).await;
    let s3 = s3_client(&aws_config(&moto_endpoint()).await);

    // A bucket that does not exist.
    let missing = integration_tests::unique("missing");
    let (hint, answer) = refused(&admin, &missing, "put-object", "NoSuchBucket").await;
    assert!(
        hint.contains(&format!("no bucket named {missing}")),
        "{hint}"
    );
    assert_eq!(
        answer["connection_test"]["passed"],
        json!(["assume-role", "external-id-required"])
    );

    // A bucket policy denying PutObject.
    let no_put = new_bucket(&s3).await;
    deny_on_objects(&s3, &no_put, "s3:PutObject").await;
    let (hint, _) = refused(&admin, &no_put, "put-object", "AccessDenied").await;
    assert!(hint.contains("s3:PutObject on arn:aws:s3:::"), "{hint}");

    // A bucket policy denying DeleteObject: the put worked, the delete did not.
    let no_delete = new_bucket(&s3).await;
    deny_on_objects(&s3, &no_delete, "s3:DeleteObject").await;
    let (hint, answer) = refused(&admin, &no_delete, "delete-object", "AccessDenied").await;
    assert!(hint.contains("s3:DeleteObject"), "{hint}");
    // S3 answers this refusal without a body: the message is a sentence, not the client
    // library's dump of the raw response.
    let message = answer["connection_test"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.starts_with("HTTP 403 without an error body: access denied"),
        "{message}"
    );
    assert_eq!(
        answer["connection_test"]["passed"],
        json!([
            "assume-role",
            "external-id-required",
            "put-object",
            "head-object"
        ])
    );

    // A role without GetObject: the put worked, reading back its SHA-256 did not.
    let no_get = new_bucket(&s3).await;
    proxy.set(Faults {
        deny_object_heads: true,
        ..Faults::default()
    });
    let (hint, answer) = refused(&admin, &no_get, "head-object", "AccessDenied").await;
    proxy.set(Faults::default());
    assert!(hint.contains("s3:GetObject on arn:aws:s3:::"), "{hint}");
    assert_eq!(
        answer["connection_test"]["passed"],
        json!(["assume-role", "external-id-required", "put-object"])
    );

    // A bucket of the right name owned by another account (the customer's was deleted and the
    // name taken): S3 refuses writes that expect the customer's account as owner.
    let taken = new_bucket(&s3).await;
    proxy.set(Faults {
        bucket_owners: vec![(taken.clone(), "999999999999".to_owned())],
        ..Faults::default()
    });
    let (hint, _) = refused(&admin, &taken, "put-object", "AccessDenied").await;
    assert!(
        hint.contains(&format!("belong to account {CUSTOMER_ACCOUNT}")),
        "{hint}"
    );

    // STS refuses the role (a trust policy without the vendor role or external id).
    let good = new_bucket(&s3).await;
    proxy.set(Faults {
        deny_assume_role: true,
        ..Faults::default()
    });
    let (hint, _) = refused(&admin, &good, "assume-role", "AccessDenied").await;
    assert!(hint.contains("sts:ExternalId"), "{hint}");
    assert!(
        hint.contains("arn:aws:iam::123456789012:role/writer-"),
        "{hint}"
    );
    assert_eq!(
        admin.get("acme").await.0,
        StatusCode::NOT_FOUND,
        "nothing was saved"
    );
    assert_eq!(integrations_written(&admin).await, 0, "nothing was saved");

    // The fault cleared: the test alone passes, leaves nothing behind and saves nothing.
    proxy.set(Faults::default());
    let connected = admin.provisioned_settings("acme", &good).await;
    let (status, answer) = admin.test("acme", &connected).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        answer["connection_test"]["steps"],
        json!(ingest::admin::connection::STEPS)
    );
    let test_key = answer["connection_test"]["test_object_key"]
        .as_str()
        .expect("key");
    assert!(
        test_key.starts_with("audit/acme/_connection-test-"),
        "{test_key}"
    );
    assert_eq!(
        object_count(&s3, &good).await.unwrap_or(0),
        0,
        "the test object was deleted"
    );
    assert_eq!(admin.get("acme").await.0, StatusCode::NOT_FOUND);

    // Saving runs the test again, then the integration is there at once.
    let (status, answer) = admin.put("acme", &connected).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(answer["first_delivery_requested"], json!(true));
    assert_eq!(object_count(&s3, &good).await.unwrap_or(0), 0);
    let (status, answer) = admin.get("acme").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a GET right after the PUT sees it: {answer}"
    );
    assert_eq!(answer["integration"]["bucket"], json!(good));
    assert_eq!(answer["integration"]["enabled"], json!(true));
    assert_eq!(integrations_written(&admin).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_the_vendor_can_assume_without_the_tenants_external_id_is_refused() {
    use integration_tests::customer::Iam;
    let moto = moto_endpoint();
    let admin = AdminIngest::spawn(&moto, &[]).await;
    let s3 = s3_client(&aws_config(&moto).await);
    let bucket = new_bucket(&s3).await;
    let setup = admin.setup_documents("acme", &bucket).await;
    let external_id = setup["external_id"].as_str().expect("external id");
    let iam = Iam::new(&moto);
    let role_name = integration_tests::unique("writer");

    // The trust policy names the vendor's role but forgets the external id condition: anyone
    // with an account here could point their integration at this role.
    let mut careless = setup["trust_policy"].clone();
    careless["Statement"][0]
        .as_object_mut()
        .expect("statement")
        .remove("Condition");
    let role_arn = iam
        .create_role(&role_name, &careless, &setup["role_policy"])
        .await
        .expect("create the role");
    let mut connected = settings(&bucket);
    connected["role_arn"] = json!(role_arn);
    let (status, answer) = admin.put("acme", &connected).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    let test = &answer["connection_test"];
    assert_eq!(test["step"], json!("external-id-required"), "{answer}");
    assert_eq!(test["code"], json!("ExternalIdNotRequired"), "{answer}");
    assert_eq!(test["passed"], json!(["assume-role"]), "{answer}");
    let hint = test["hint"].as_str().expect("hint");
    assert!(
        hint.contains(&format!(
            r#""StringEquals": {{"sts:ExternalId": "{external_id}"}}"#
        )),
        "{hint}"
    );
    assert_eq!(admin.get("acme").await.0, StatusCode::NOT_FOUND);
    assert_eq!(integrations_written(&admin).await, 0, "nothing was saved");
    assert_eq!(
        object_count(&s3, &bucket).await.unwrap_or(0),
        0,
        "nothing was written"
    );

    // A condition naming another tenant's external id: the vendor cannot assume the role at all.
    let mut others = setup["trust_policy"].clone();
    others["Statement"][0]["Condition"]["StringEquals"]["sts:ExternalId"] =
        json!("another-tenants-external-id");
    iam.update_trust_policy(&role_name, &others)
        .await
        .expect("update the trust policy");
    let (status, answer) = admin.put("acme", &connected).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["connection_test"]["step"], json!("assume-role"));
    assert_eq!(answer["connection_test"]["code"], json!("AccessDenied"));

    // The trust policy exactly as the setup documents give it: connected.
    iam.update_trust_policy(&role_name, &setup["trust_policy"])
        .await
        .expect("update the trust policy");
    let (status, answer) = admin.put("acme", &connected).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(
        answer["connection_test"]["steps"],
        json!(ingest::admin::connection::STEPS)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_digest_public_keys_are_served_as_the_verifier_reads_them() {
    let dir = std::env::temp_dir().join(integration_tests::unique("digest-keys"));
    std::fs::create_dir_all(&dir).expect("directory");
    // Two keys valid at once during a rotation: the retiring one with its end.
    let keys: Vec<Value> = ["current", "retiring"]
        .iter()
        .map(|name| {
            let path = dir.join(format!("{name}.pem"));
            let made = std::process::Command::new("openssl")
                .args(["genpkey", "-algorithm", "ed25519", "-out"])
                .arg(&path)
                .status()
                .expect("openssl");
            assert!(made.success());
            let key =
                common::digest::signing::SigningKey::from_pem(&std::fs::read(&path).expect("key"))
                    .expect("an Ed25519 key");
            json!({
                "key_id": key.key_id(),
                "public_key_pem": key.public_key_pem(),
                "valid_from": "2026-01-01T00:00:00Z",
                "valid_until": (*name == "retiring").then_some("2026-12-31T00:00:00Z"),
            })
        })
        .collect();
    let file = dir.join("keys.json");
    std::fs::write(&file, json!({ "keys": keys }).to_string()).expect("keys file");
    let path = file.to_string_lossy().into_owned();
    let admin = AdminIngest::spawn(&moto_endpoint(), &["--digest-public-keys", &path]).await;
    let (status, answer) = admin.call(Method::GET, "/v1/digest-keys", None).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let served: Vec<common::digest::signing::PublishedKey> =
        serde_json::from_value(answer["keys"].clone()).expect("the keys as published");
    assert_eq!(served.len(), 2);
    assert_eq!(json!(served), json!(keys));
    common::digest::signing::PublicKeys::new(served).expect("keys a verifier accepts");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_the_admin_token_is_refused_before_its_body_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let admin = AdminIngest::spawn(&moto_endpoint(), &[]).await;
    let mut stream = tokio::net::TcpStream::connect(admin.ingest.address)
        .await
        .expect("connect");
    // Headers announcing a 10 MiB body that never comes.
    let request = format!(
        "PUT {} HTTP/1.1\r\nHost: ingest\r\nAuthorization: Bearer wrong\r\n\
         Content-Type: application/json\r\nContent-Length: 10485760\r\n\r\n{{",
        integration_path("acme")
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the headers");
    let mut answer = vec![0_u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
        .await
        .expect("the refusal comes without waiting for the body")
        .expect("read the answer");
    let head = String::from_utf8_lossy(&answer[..read]);
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_says_ready_only_once_the_admin_api_has_read_the_integrations() {
    // Enough integrations that reading them takes a while after ingest starts listening.
    let integrations = IntegrationsTopic::create().await;
    let tenants: Vec<String> = (0..20_000).map(|n| format!("t{n:05}")).collect();
    futures_util::future::join_all(
        tenants
            .iter()
            .map(|tenant| integrations.connect(tenant, "acme-logs")),
    )
    .await;
    let plan = Plan::new(&moto_endpoint(), Shape::single()).with_integrations(&integrations.name);
    // `start_ingest` returns once `/readyz` answers 200; the very next admin call must be served.
    let admin = plan.start_ingest().await;
    let last = tenants.last().expect("tenants");
    let (status, answer) = admin.call(Method::GET, &integration_path(last), None).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["integration"]["tenant_id"], json!(last), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_documents_are_policies_naming_the_bucket_the_vendor_role_and_the_external_id() {
    let admin = AdminIngest::spawn(&moto_endpoint(), &[]).await;
    let s3 = s3_client(&aws_config(&moto_endpoint()).await);
    let bucket = new_bucket(&s3).await;
    let setup = admin.setup_documents("acme", &bucket).await;
    assert_eq!(setup["vendor_role_arn"], json!(VENDOR_ROLE));
    assert_eq!(setup["vendor_account_id"], json!("111122223333"));
    assert_eq!(
        setup["destination"],
        json!(format!("s3://{bucket}/audit/acme/"))
    );
    let external_id = setup["external_id"]
        .as_str()
        .expect("external id")
        .to_owned();
    assert_eq!(external_id.len(), 64);

    let trust = &setup["trust_policy"]["Statement"][0];
    assert_eq!(trust["Principal"]["AWS"], json!(VENDOR_ROLE));
    assert_eq!(trust["Action"], json!("sts:AssumeRole"));
    assert_eq!(
        trust["Condition"]["StringEquals"]["sts:ExternalId"],
        json!(external_id)
    );
    let role = &setup["role_policy"]["Statement"];
    assert_eq!(role[0]["Action"], json!("s3:ListBucket"));
    assert_eq!(role[0]["Resource"], json!(format!("arn:aws:s3:::{bucket}")));
    assert_eq!(
        (&role[1]["Action"], &role[1]["Resource"]),
        (
            &json!(["s3:PutObject", "s3:GetObject"]),
            &json!(format!("arn:aws:s3:::{bucket}/audit/acme/*"))
        )
    );
    assert_eq!(
        (&role[2]["Action"], &role[2]["Resource"]),
        (
            &json!("s3:DeleteObject"),
            &json!(format!(
                "arn:aws:s3:::{bucket}/audit/acme/_connection-test-*"
            ))
        )
    );
    let ssl_only = &setup["bucket_policy"]["Statement"][0];
    assert_eq!(ssl_only["Effect"], json!("Deny"));
    assert_eq!(
        ssl_only["Resource"][1],
        json!(format!("arn:aws:s3:::{bucket}/*"))
    );

    // A second tenant gets another external id; asking again gives the same one.
    let (_, other) = admin
        .call(
            Method::GET,
            &format!("/v1/integrations/s3/setup?tenant=globex&bucket={bucket}"),
            None,
        )
        .await;
    assert_ne!(other["external_id"], json!(external_id));
    let (_, again) = admin
        .call(
            Method::GET,
            &format!("/v1/integrations/s3/setup?tenant=acme&bucket={bucket}"),
            None,
        )
        .await;
    assert_eq!(again["external_id"], json!(external_id));

    // The saved integration carries the external id the documents showed.
    let connected = admin.provisioned_settings("acme", &bucket).await;
    let (status, answer) = admin.put("acme", &connected).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(answer["integration"]["external_id"], json!(external_id));

    // S3 takes the SSL-only bucket policy as written, and enforces it: this admin API talks to
    // the server's plain port, so the connection test's first write is refused (delivery over
    // TLS into such a bucket: tests/tests/customer_bucket.rs).
    s3.put_bucket_policy()
        .bucket(&bucket)
        .policy(setup["bucket_policy"].to_string())
        .send()
        .await
        .expect("S3 accepts the bucket policy document");
    let (status, answer) = admin.test("acme", &connected).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["connection_test"]["step"], json!("put-object"));
    assert!(
        answer["connection_test"]["hint"]
            .as_str()
            .expect("hint")
            .contains("TLS"),
        "{answer}"
    );

    for (query, field) in [
        ("tenant=acme".to_owned(), "bucket"),
        (format!("tenant=../x&bucket={bucket}"), "tenant"),
        ("tenant=acme&bucket=Bad_Bucket".to_owned(), "bucket"),
        (format!("tenant=acme&bucket={bucket}&prefix=/x"), "prefix"),
    ] {
        let (status, answer) = admin
            .call(
                Method::GET,
                &format!("/v1/integrations/s3/setup?{query}"),
                None,
            )
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{query}: {answer}"
        );
        assert_eq!(problem_fields(&answer), [field], "{query}");
    }
}
