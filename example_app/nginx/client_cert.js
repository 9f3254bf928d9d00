// RFC 9440 Client-Cert for nginx (njs), used by anybank.conf:
//
//     js_import client_cert from /etc/nginx/anybank/client_cert.js;
//     js_set $client_cert_rfc9440 client_cert.rfc9440;
//
// The value is the TLS client certificate as an RFC 8941 byte sequence, the DER certificate in
// base64 between colons, or "" when the client sent none (nginx then sends no header at all).
// With `ssl_verify_client optional` a certificate that does not verify never gets this far:
// nginx answers 400.

function rfc9440(r) {
    var pem = r.variables.ssl_client_raw_cert;
    if (!pem) {
        return "";
    }
    return ":" + pem.replace(/-----[A-Z ]+-----/g, "").replace(/\s+/g, "") + ":";
}

export default { rfc9440 };
