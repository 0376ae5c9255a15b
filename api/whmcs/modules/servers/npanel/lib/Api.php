<?php
/**
 * nPanel WHMCS server module: the signed HTTP client and the sentences WHMCS shows.
 *
 * Every request to /api/whmcs/* carries
 *   Authorization: Bearer <key id>
 *   X-WHMCS-Timestamp: <unix seconds>
 *   X-WHMCS-Signature: hex(HMAC-SHA256(secret, "<timestamp>.<METHOD>.<path?query>.<raw body>"))
 * exactly as nPanel verifies it (api/src/whmcs.rs). nPanel accepts each signature once, so every
 * request carries a random nonce (a "nonce" body field, or ?nonce= on a GET): two identical
 * calls in the same second still differ.
 */

namespace WHMCS\Module\Server\Npanel;

if (!defined('WHMCS')) {
    die('This file cannot be accessed directly');
}

/** One HTTP exchange with nPanel, as the module functions need it. */
class Response
{
    /** @var string "GET" or "POST" */
    public $method;
    /** @var string full URL called */
    public $url;
    /** @var string path?query that was signed */
    public $pathQuery;
    /** @var string the exact body sent ('' for GET) */
    public $body = '';
    /** @var int HTTP status (0: no answer) */
    public $http = 0;
    /** @var string raw answer */
    public $raw = '';
    /** @var array|null the answer's JSON object */
    public $json = null;
    /** @var int curl errno (0: the exchange completed) */
    public $curlErrno = 0;
    /** @var string curl error text */
    public $curlError = '';
    /** @var array lower-case header name => value */
    public $headers = [];
    /** @var float seconds */
    public $seconds = 0.0;

    /** nPanel's "status": success, pending, error, or '' when the answer is not nPanel's. */
    public function status()
    {
        if (!is_array($this->json) || !isset($this->json['status']) || !is_string($this->json['status'])) {
            return '';
        }
        return $this->json['status'];
    }

    public function isSuccess()
    {
        return $this->curlErrno === 0 && $this->http >= 200 && $this->http < 300 && $this->status() === 'success';
    }

    public function field($name, $default = null)
    {
        return (is_array($this->json) && array_key_exists($name, $this->json)) ? $this->json[$name] : $default;
    }

    /** What logModuleCall shows as the response: the answer, with the HTTP status and curl error. */
    public function forLog()
    {
        if ($this->curlErrno !== 0) {
            return 'curl error ' . $this->curlErrno . ': ' . $this->curlError;
        }
        $rid = isset($this->headers['x-request-id']) ? ' (request id ' . $this->headers['x-request-id'] . ')' : '';
        return 'HTTP ' . $this->http . $rid . "\n" . $this->raw;
    }
}

/** The signed client of one WHMCS server record. */
class Api
{
    /** Below PHP's and WHMCS's limits: nPanel answers within api.whmcs.wait_secs (25 s). */
    const CONNECT_TIMEOUT = 5;
    const TIMEOUT = 30;
    /** A 429 is retried once, at once, when nPanel asks for at most this many seconds. */
    const MAX_RETRY_AFTER = 3;
    const USER_AGENT = 'nPanel-WHMCS-module/1.0';

    /** @var string scheme://host[:port] */
    private $base;
    /** @var string */
    private $keyId;
    /** @var string */
    private $secret;

    public function __construct($base, $keyId, $secret)
    {
        $this->base = rtrim($base, '/');
        $this->keyId = trim((string) $keyId);
        $this->secret = trim((string) $secret);
    }

    /**
     * The client for WHMCS's server fields: serverhostname (or serverip), serverport,
     * serversecure, serverusername = key id, serverpassword = secret.
     */
    public static function fromParams(array $params)
    {
        return new self(self::baseUrl($params), $params['serverusername'] ?? '', $params['serverpassword'] ?? '');
    }

    /** scheme://host:port from the server record (a hostname typed as a URL is understood too). */
    public static function baseUrl(array $params)
    {
        $secure = self::truthy($params['serversecure'] ?? false);
        $host = trim((string) ($params['serverhostname'] ?? ''));
        if ($host === '') {
            $host = trim((string) ($params['serverip'] ?? ''));
        }
        $port = trim((string) ($params['serverport'] ?? ''));
        if (strpos($host, '://') !== false) {
            $u = parse_url($host);
            if (is_array($u) && isset($u['host'])) {
                $secure = isset($u['scheme']) ? strtolower($u['scheme']) === 'https' : $secure;
                if ($port === '' && isset($u['port'])) {
                    $port = (string) $u['port'];
                }
                $host = $u['host'];
            }
        }
        $host = rtrim($host, '/');
        if ($host !== '' && strpos($host, ':') !== false && $host[0] !== '[') {
            $host = '[' . $host . ']'; // an IPv6 literal
        }
        if ($port === '' || $port === '0') {
            $port = $secure ? '443' : '8080';
        }
        return ($secure ? 'https' : 'http') . '://' . $host . ':' . $port;
    }

    public static function truthy($v)
    {
        if (is_bool($v)) {
            return $v;
        }
        $v = strtolower(trim((string) $v));
        return $v === 'on' || $v === '1' || $v === 'true' || $v === 'yes';
    }

    public function base()
    {
        return $this->base;
    }

    public function keyId()
    {
        return $this->keyId;
    }

    /** hex(HMAC-SHA256(secret, "<timestamp>.<METHOD>.<path?query>.<raw body>")) */
    public static function sign($secret, $timestamp, $method, $pathQuery, $body)
    {
        return hash_hmac('sha256', $timestamp . '.' . $method . '.' . $pathQuery . '.' . $body, $secret);
    }

    /** A signed GET of $path (no query of its own). */
    public function get($path)
    {
        return $this->send('GET', $path, null);
    }

    /** A signed POST of $fields as JSON. */
    public function post($path, array $fields)
    {
        return $this->send('POST', $path, $fields);
    }

    private function send($method, $path, $fields)
    {
        $r = $this->once($method, $path, $fields);
        if ($r->http === 429) {
            $after = isset($r->headers['retry-after']) ? (int) $r->headers['retry-after'] : 1;
            if ($after <= self::MAX_RETRY_AFTER) {
                sleep(max(1, $after));
                $r = $this->once($method, $path, $fields);
            }
        }
        return $r;
    }

    private function once($method, $path, $fields)
    {
        $nonce = bin2hex(random_bytes(12));
        $r = new Response();
        $r->method = $method;
        if ($fields === null) {
            $r->pathQuery = $path . '?nonce=' . $nonce;
            $r->body = '';
        } else {
            $r->pathQuery = $path;
            $fields['nonce'] = $nonce;
            $r->body = json_encode($fields, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE);
        }
        $r->url = $this->base . $r->pathQuery;
        if (!function_exists('curl_init')) {
            $r->curlErrno = -1;
            $r->curlError = 'the PHP curl extension is not installed on the WHMCS server';
            return $r;
        }
        $ts = (string) time();
        $headers = [
            'Authorization: Bearer ' . $this->keyId,
            'X-WHMCS-Timestamp: ' . $ts,
            'X-WHMCS-Signature: ' . self::sign($this->secret, $ts, $method, $r->pathQuery, $r->body),
            'Accept: application/json',
        ];
        $ch = curl_init($r->url);
        $opts = [
            CURLOPT_RETURNTRANSFER => true,
            CURLOPT_CONNECTTIMEOUT => self::CONNECT_TIMEOUT,
            CURLOPT_TIMEOUT => self::TIMEOUT,
            CURLOPT_FOLLOWLOCATION => false,
            CURLOPT_SSL_VERIFYPEER => true,
            CURLOPT_SSL_VERIFYHOST => 2,
            CURLOPT_USERAGENT => self::USER_AGENT,
            CURLOPT_HEADERFUNCTION => function ($ch, $line) use ($r) {
                $p = strpos($line, ':');
                if ($p !== false) {
                    $r->headers[strtolower(trim(substr($line, 0, $p)))] = trim(substr($line, $p + 1));
                }
                return strlen($line);
            },
        ];
        if ($method === 'POST') {
            $opts[CURLOPT_POST] = true;
            $opts[CURLOPT_POSTFIELDS] = $r->body;
            $headers[] = 'Content-Type: application/json';
            $headers[] = 'Expect:'; // no 100-continue round trip for larger bodies
        } else {
            $opts[CURLOPT_HTTPGET] = true;
        }
        $opts[CURLOPT_HTTPHEADER] = $headers;
        curl_setopt_array($ch, $opts);
        $t = microtime(true);
        $raw = curl_exec($ch);
        $r->seconds = microtime(true) - $t;
        if ($raw === false) {
            $r->curlErrno = curl_errno($ch);
            $r->curlError = curl_error($ch);
        } else {
            $r->raw = (string) $raw;
            $r->http = (int) curl_getinfo($ch, CURLINFO_RESPONSE_CODE);
            $j = json_decode($r->raw, true);
            $r->json = is_array($j) ? $j : null;
        }
        if (PHP_VERSION_ID < 80000) {
            curl_close($ch); // a no-op (and later deprecated) since PHP 8
        }
        return $r;
    }

    /**
     * The string a WHMCS action returns for $r: the literal 'success' only when nPanel
     * answered {"status": "success"}; else one sentence a billing admin can act on, naming what
     * failed. $action reads after "could not", e.g. "suspend account shop1".
     */
    public function outcome($action, Response $r)
    {
        if ($r->isSuccess()) {
            return 'success';
        }
        return $this->explain($action, $r);
    }

    /** The sentence for a failed or unfinished exchange (see outcome()). */
    public function explain($action, Response $r)
    {
        if ($r->curlErrno !== 0) {
            return 'Could not ' . $action . ' on nPanel: ' . $this->transportHint($r);
        }
        $status = $r->status();
        if ($status === 'pending') {
            $job = (string) $r->field('job_id', '?');
            return 'nPanel has not finished yet (nothing failed): the job to ' . $action . ', job ' . $job
                . ', is still running. A Module Queue retry will finish it: press Retry under Utilities > Module Queue'
                . ' in a minute, or let the automatic retry do it.';
        }
        if ($status === 'error') {
            $msg = trim((string) $r->field('message', ''));
            $code = (string) $r->field('error', 'error');
            $s = 'nPanel could not ' . $action . ': ' . ($msg !== '' ? rtrim($msg, '.') : 'it gave no reason');
            if ($r->http === 429) {
                $after = $r->headers['retry-after'] ?? '';
                $s .= ' (too many requests for this API key' . ($after !== '' ? '; retry in ' . $after . ' s' : '') . ')';
            }
            return $s . ' [nPanel error ' . $code . ', HTTP ' . $r->http . $this->requestId($r) . '].';
        }
        if ($status === 'success') {
            // Only with an HTTP status outside 2xx: not nPanel's behaviour.
            return 'Could not ' . $action . ' on nPanel: it answered success with HTTP ' . $r->http
                . ', which this module does not trust; check the server with its administrator.';
        }
        $snippet = trim(preg_replace('/\s+/', ' ', substr($r->raw, 0, 160)));
        return 'Could not ' . $action . ' on nPanel: ' . $this->base . ' answered HTTP ' . $r->http . ' without an nPanel API answer'
            . ($snippet !== '' ? ' ("' . $snippet . '")' : '')
            . '; check the server\'s hostname, port and SSL setting in WHMCS (another web server, or a proxy, may be answering).';
    }

    private function requestId(Response $r)
    {
        return isset($r->headers['x-request-id']) ? ', request id ' . $r->headers['x-request-id'] : '';
    }

    private function transportHint(Response $r)
    {
        $base = $this->base;
        switch ($r->curlErrno) {
            case -1:
                return $r->curlError . '; install php-curl.';
            case 6: // CURLE_COULDNT_RESOLVE_HOST
                return 'the hostname in ' . $base . ' does not resolve (curl error 6: ' . $r->curlError . '); correct the server\'s hostname in WHMCS.';
            case 7: // CURLE_COULDNT_CONNECT
                return 'nothing accepted the connection at ' . $base . ' (curl error 7: ' . $r->curlError . '); check that nPanel is running and the server\'s port and SSL setting in WHMCS.';
            case 28: // CURLE_OPERATION_TIMEDOUT
                return 'nPanel at ' . $base . ' did not answer within ' . self::TIMEOUT . ' s (curl error 28: ' . $r->curlError . '); if the request reached it, its job may still be running: a Module Queue retry is safe (every call is idempotent) and will finish it.';
            case 35: // CURLE_SSL_CONNECT_ERROR
            case 51:
            case 58:
            case 60: // CURLE_PEER_FAILED_VERIFICATION
                return 'the TLS connection to ' . $base . ' failed (curl error ' . $r->curlErrno . ': ' . $r->curlError . '); give nPanel a certificate the WHMCS server trusts, or untick "Secure" if it only speaks plain HTTP.';
            default:
                return 'the request to ' . $base . ' failed (curl error ' . $r->curlErrno . ': ' . $r->curlError . '); check the server\'s settings in WHMCS and retry.';
        }
    }
}
