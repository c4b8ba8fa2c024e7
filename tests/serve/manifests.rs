//! Manifests in, xDS out: the first sync over both protocols, edits and
//! deletes, a broken file keeping its last good objects.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_sync_over_sotw_and_delta() {
    let f = Fixture::start(&[
        ("00-backends.yaml", backends()),
        ("10-shop.yaml", yaml(&[shop()])),
    ])
    .await;

    let mut envoy = Sotw::open_envoy(f.server.xds_addr(), "envoy-sotw").await;
    envoy.until("the shop", has_shop).await;
    let mut delta = Delta::open_envoy(f.server.xds_addr(), "envoy-delta").await;
    delta.until("the shop", has_shop).await;

    for held in [&envoy.held, &delta.held] {
        // Envoy never receives the API listeners meant for gRPC clients.
        assert_eq!(names(&held.snapshot, LDS), ["ingress_http"]);
        assert_eq!(
            routes(&held.snapshot, "ingress_http", "shop.example.com"),
            pairs(&[
                ("path=/api", "cluster=default/api/80"),
                ("prefix=/api/", "cluster=default/api/80"),
                ("prefix=/", "cluster=default/web/80")
            ])
        );
        let cla = load_assignment(&held.snapshot, WEB).unwrap();
        assert_eq!(
            cla.endpoints
                .iter()
                .map(|l| l.lb_endpoints.len())
                .sum::<usize>(),
            1
        );
    }

    // A proxyless gRPC client names the host it dials.
    let mut grpc = Sotw::open(f.server.xds_addr(), "grpc").await;
    grpc.subscribe(LDS, &["shop.example.com"]).await;
    let r = grpc.step().await;
    assert_eq!(
        names(&grpc.held.snapshot, LDS),
        ["shop.example.com"],
        "{r:?}"
    );
    let api = listener(&grpc.held.snapshot, "shop.example.com").unwrap();
    let hcm = api.api_listener.unwrap().api_listener.unwrap();
    let hcm = envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager::decode(&hcm.value[..]).unwrap();
    let Some(envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier::Rds(rds)) = hcm.route_specifier else {
        panic!("the API listener names its routes over RDS: {hcm:?}");
    };
    // Its own route configuration: this host only, not the whole listener's.
    assert_eq!(rds.route_config_name, "grpc:ingress_http/shop.example.com");
    grpc.subscribe(RDS, &[&rds.route_config_name]).await;
    grpc.until("the host's routes", |h| {
        names(&h.snapshot, RDS) == ["grpc:ingress_http/shop.example.com"]
    })
    .await;
    let rc = route_config(&grpc.held.snapshot, &rds.route_config_name).unwrap();
    assert_eq!(rc.virtual_hosts.len(), 1);
    assert_eq!(
        routes(
            &grpc.held.snapshot,
            &rds.route_config_name,
            "shop.example.com"
        ),
        routes(&envoy.held.snapshot, "ingress_http", "shop.example.com")
    );
    // And Envoy, subscribed to every route configuration, never sees it.
    assert_eq!(names(&envoy.held.snapshot, RDS), ["ingress_http"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_edits_reach_clients_and_deletes_remove_routes() {
    let f = Fixture::start(&[
        ("00-backends.yaml", backends()),
        ("10-shop.yaml", yaml(&[shop()])),
    ])
    .await;
    let mut envoy = Sotw::open_envoy(f.server.xds_addr(), "envoy-sotw").await;
    let mut delta = Delta::open_envoy(f.server.xds_addr(), "envoy-delta").await;
    envoy.until("the shop", has_shop).await;
    delta.until("the shop", has_shop).await;

    // A new file: a new host.
    let blog = ingress(
        "default",
        "blog",
        &[("blog.example.com", &[("/", "Prefix", "web", json!(80))])],
    );
    f.write("20-blog.yaml", &yaml(&[blog]));
    let both = |h: &Held| {
        h.domains("ingress_http")
            == ["blog.example.com", "shop.example.com"]
                .map(String::from)
                .into()
    };
    envoy.until("blog.example.com", both).await;
    delta.until("blog.example.com", both).await;

    // An edit of an existing file: /api goes to web too.
    let edited = ingress(
        "default",
        "shop",
        &[(
            "shop.example.com",
            &[
                ("/", "Prefix", "web", json!(80)),
                ("/api", "Prefix", "web", json!(80)),
            ],
        )],
    );
    f.write("10-shop.yaml", &yaml(&[edited]));
    let all_web = pairs(&[
        ("path=/api", "cluster=default/web/80"),
        ("prefix=/api/", "cluster=default/web/80"),
        ("prefix=/", "cluster=default/web/80"),
    ]);
    let api_gone = |h: &Held| {
        names(&h.snapshot, CDS) == [WEB]
            && routes(&h.snapshot, "ingress_http", "shop.example.com") == all_web
    };
    envoy.until("/api to go to web", api_gone).await;
    delta.until("/api to go to web", api_gone).await;

    // Deleting a manifest removes its routes.
    f.remove("10-shop.yaml");
    let only_blog = |h: &Held| h.domains("ingress_http") == ["blog.example.com".to_string()].into();
    envoy.until("the shop to go", only_blog).await;
    delta.until("the shop to go", only_blog).await;

    // Deleting the last Ingress removes the listener (SotW: left out;
    // delta: removed_resources).
    f.remove("20-blog.yaml");
    let empty = |h: &Held| names(&h.snapshot, LDS).is_empty() && names(&h.snapshot, CDS).is_empty();
    envoy.until("everything to go", empty).await;
    delta.until("everything to go", empty).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_manifest_keeps_last_good_objects_and_reports_file_and_line() {
    let f = Fixture::start(&[
        ("00-backends.yaml", backends()),
        ("10-shop.yaml", yaml(&[shop()])),
    ])
    .await;
    let mut envoy = Sotw::open_envoy(f.server.xds_addr(), "envoy").await;
    envoy.until("the shop", has_shop).await;
    let version = f.version();

    // The file's first document changes (api -> web), its second is broken
    // at a known line: nothing of the file applies.
    let good = yaml(&[ingress(
        "default",
        "shop",
        &[("shop.example.com", &[("/", "Prefix", "web", json!(80))])],
    )]);
    let broken_at = good.lines().count() + 2;
    let text = format!("{good}---\napiVersion: v1\nkind: Service\nmetadata:\n  name: [broken\n");
    f.write("10-shop.yaml", &text);
    f.wait("the manifest error", |s| !s.manifest_errors().is_empty())
        .await;
    let errors = f.server.report().manifest_errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let path = f.path("10-shop.yaml").canonicalize().unwrap();
    assert_eq!(errors[0].file, path.display().to_string());
    assert!(
        (broken_at..=broken_at + 4).contains(&errors[0].line),
        "line {} is not in the broken document (from line {broken_at}): {}",
        errors[0].line,
        errors[0].message
    );
    assert_eq!(
        errors[0].location,
        format!("{}:{}", path.display(), errors[0].line)
    );
    let d = f.get_json("/debug/diagnostics").await;
    assert_eq!(
        d["manifest_errors"][0]["location"],
        json!(errors[0].location)
    );

    // The last good objects keep serving: same snapshot, both clusters.
    assert_eq!(f.version(), version);
    assert!(shop_in(&f.server.report().snapshot()));

    // Fixing the file applies it and clears the error.
    f.write("10-shop.yaml", &good);
    envoy
        .until("the api cluster to go", |h| {
            names(&h.snapshot, CDS) == [WEB]
        })
        .await;
    f.wait("the error to clear", |s| s.manifest_errors().is_empty())
        .await;
}
