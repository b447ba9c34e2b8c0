// /docs: Swagger UI on this service's /openapi.json. An external file, so that the page's policy
// needs no inline script (shared/web/docs.py).
window.addEventListener("load", () => {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    // No call to the public validator: the page talks only to its own origin.
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
