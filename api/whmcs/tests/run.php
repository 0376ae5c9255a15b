<?php
/**
 * Drives every function of the nPanel WHMCS module against a real nPanel server, end to end,
 * inside the WHMCS stand-in of harness.php.
 *
 *   NPANEL_URL=http://127.0.0.1:8080 NPANEL_WHMCS_KEY=wk_... NPANEL_WHMCS_SECRET=... \
 *     php api/whmcs/tests/run.php
 *
 * Optional: NPANEL_TEST_USERNAME (default: random), NPANEL_TEST_SERVICE_ID (default: random),
 * NPANEL_TEST_PACKAGE / NPANEL_TEST_PACKAGE2 (default basic / pro: active packages),
 * NPANEL_HOST_ROOT (the server's host root, when local: the home and the terminate backup are
 * checked on disk too).
 *
 * Prints one "ok N - ..." line per check; exits 1 at the first failed check, with its reason.
 */

require __DIR__ . '/harness.php';

use WHMCS\Database\Expression;
use WHMCS\Database\FakeDb;
use WHMCS\Module\Server\Npanel\Api;
use WHMCS\Module\Server\Npanel\Response;

function env($name, $default = null)
{
    $v = getenv($name);
    return ($v === false || $v === '') ? $default : $v;
}

$url = env('NPANEL_URL');
$key = env('NPANEL_WHMCS_KEY');
$secret = env('NPANEL_WHMCS_SECRET');
if (!$url || !$key || !$secret) {
    fwrite(STDERR, "run.php: set NPANEL_URL, NPANEL_WHMCS_KEY and NPANEL_WHMCS_SECRET (from `npanel whmcs key create`).\n");
    exit(2);
}
if (!function_exists('curl_init')) {
    fwrite(STDERR, "run.php: the PHP curl extension is missing (install php-curl).\n");
    exit(2);
}

$u = parse_url($url);
$user = env('NPANEL_TEST_USERNAME', 'w' . substr(bin2hex(random_bytes(8)), 0, 9));
$sid = (int) env('NPANEL_TEST_SERVICE_ID', (string) random_int(100000, 2000000000));
$pkg1 = env('NPANEL_TEST_PACKAGE', 'basic');
$pkg2 = env('NPANEL_TEST_PACKAGE2', 'pro');
$hostRoot = env('NPANEL_HOST_ROOT');
$pw1 = 'Wh1-' . bin2hex(random_bytes(6)) . '/"Q';
$pw2 = 'Wh2-' . bin2hex(random_bytes(6)) . '\\Z';
$domain = $user . '.example.org';
$serverId = 3;

$params = [
    // the server record
    'server' => true,
    'serverid' => $serverId,
    'serverhostname' => $u['host'] ?? '127.0.0.1',
    'serverip' => '127.0.0.1',
    'serverport' => (string) ($u['port'] ?? ''),
    'serversecure' => (($u['scheme'] ?? 'http') === 'https') ? 'on' : '',
    'serverhttpprefix' => $u['scheme'] ?? 'http',
    'serverusername' => $key,
    'serverpassword' => $secret,
    'serveraccesshash' => '',
    // the service
    'serviceid' => $sid,
    'userid' => 42,
    'pid' => 7,
    'producttype' => 'hostingaccount',
    'moduletype' => 'npanel',
    'domain' => $domain,
    'username' => $user,
    'password' => $pw1,
    'clientsdetails' => ['userid' => 42, 'firstname' => 'Ada', 'lastname' => 'Lovelace', 'email' => 'owner@' . $domain],
    'configoption1' => $pkg1,
    'configoptions' => [],
    'customfields' => [],
    'suspendreason' => 'Overdue on payment',
];
Harness::secret($secret);
Harness::sensitive($pw1, $pw2);
FakeDb::seed('tblhosting', [
    'id' => $sid, 'server' => $serverId, 'username' => $user, 'domain' => $domain, 'domainstatus' => 'Pending',
    'diskusage' => 0, 'disklimit' => 0, 'bwusage' => 0, 'bwlimit' => 0, 'lastupdate' => '0000-00-00 00:00:00',
]);
// Another service on this server, which no nPanel account names: never written.
FakeDb::seed('tblhosting', ['id' => $sid + 1, 'server' => $serverId, 'username' => 'other', 'diskusage' => 7]);

/** The account as nPanel shows it (a direct signed GET, not through a module function). */
function status_of(array $params, $user)
{
    $api = Api::fromParams($params);
    $r = $api->get('/api/whmcs/account/' . $user . '/status');
    Harness::check($r->isSuccess(), "GET /api/whmcs/account/{$user}/status: HTTP {$r->http} {$r->raw}{$r->curlError}");
    return $r->field('account');
}

function usage_of(array $params, $user)
{
    $api = Api::fromParams($params);
    $r = $api->get('/api/whmcs/account/' . $user . '/usage');
    Harness::check($r->isSuccess(), "GET /api/whmcs/account/{$user}/usage: HTTP {$r->http} {$r->raw}");
    return $r->json;
}

/** A plain JSON call to the panel API (what a browser does), not through the module. */
function http_json($method, $url, $body = null, $token = null)
{
    $ch = curl_init($url);
    $headers = ['Accept: application/json'];
    if ($token !== null) {
        $headers[] = 'Authorization: Bearer ' . $token;
    }
    $opts = [CURLOPT_RETURNTRANSFER => true, CURLOPT_TIMEOUT => 10, CURLOPT_CUSTOMREQUEST => $method];
    if ($body !== null) {
        $headers[] = 'Content-Type: application/json';
        $opts[CURLOPT_POSTFIELDS] = json_encode($body);
    }
    $opts[CURLOPT_HTTPHEADER] = $headers;
    curl_setopt_array($ch, $opts);
    $raw = curl_exec($ch);
    $http = (int) curl_getinfo($ch, CURLINFO_RESPONSE_CODE);
    $json = is_string($raw) ? json_decode($raw, true) : null;
    return ['http' => $http, 'json' => is_array($json) ? $json : null, 'raw' => $raw === false ? curl_error($ch) : $raw];
}

function expect_success($what, $out)
{
    Harness::check($out === 'success', "{$what} returned " . var_export($out, true) . " instead of 'success'");
}

function expect_sentence($what, $out, array $needles)
{
    Harness::check(is_string($out) && $out !== 'success' && strlen($out) > 20, "{$what} returned " . var_export($out, true) . ' instead of a sentence');
    foreach ($needles as $n) {
        Harness::check(stripos($out, $n) !== false, "{$what}: '{$out}' does not mention '{$n}'");
    }
}

try {
    // --- the function surface (no network) --------------------------------------------------
    $meta = Harness::call('MetaData');
    Harness::check(is_array($meta) && $meta['APIVersion'] === '1.1' && $meta['RequiresServer'] === true
        && $meta['DisplayName'] === 'nPanel' && $meta['ListAccountsUniqueIdentifierField'] === 'username'
        && $meta['ListAccountsProductField'] === 'configoption1', 'MetaData fields: ' . json_encode($meta));
    $opts = Harness::call('ConfigOptions');
    Harness::check(is_array($opts) && array_keys($opts) === ['nPanel package'],
        'ConfigOptions order is frozen (configoption1 = nPanel package): ' . json_encode(array_keys((array) $opts)));
    foreach (['TestConnection', 'CreateAccount', 'SuspendAccount', 'UnsuspendAccount', 'TerminateAccount', 'ChangePackage',
        'ChangePassword', 'UsageUpdate', 'ListAccounts', 'ServiceSingleSignOn', 'AdminServicesTabFields'] as $f) {
        Harness::check(function_exists('npanel_' . $f), "npanel_{$f} is missing");
    }
    // WHMCS renders a button or page for each of these: they stay absent.
    foreach (['ClientArea', 'AdminCustomButtonArray', 'ClientAreaCustomButtonArray', 'AdminSingleSignOn', 'Renew'] as $f) {
        Harness::check(!function_exists('npanel_' . $f), "npanel_{$f} must not be defined");
    }
    Harness::ok('MetaData, frozen ConfigOptions order, function surface');

    // The signature is nPanel's: hex(HMAC-SHA256(secret, "ts.METHOD.path?query.body")).
    Harness::check(Api::sign('k', '1700000000', 'POST', '/api/whmcs/x?y=1', '{}')
        === hash_hmac('sha256', '1700000000.POST./api/whmcs/x?y=1.{}', 'k'), 'signature layout');
    // A pending answer is a sentence naming the job and the Module Queue retry.
    $p = new Response();
    $p->http = 202;
    $p->json = ['status' => 'pending', 'job_id' => '01JPENDINGJOB', 'message' => 'still in progress'];
    $s = Api::fromParams($params)->outcome('create account ' . $user, $p);
    expect_sentence('a pending answer', $s, ['01JPENDINGJOB', 'still running', 'Module Queue retry will finish it']);
    Harness::ok('signature layout; a pending answer reads: ' . $s);

    // --- settings problems are sentences, without a request ---------------------------------
    $out = Harness::call('TestConnection', ['serverusername' => ''] + $params);
    Harness::check($out['success'] === false && stripos($out['error'], 'key id') !== false, 'TestConnection without a key id: ' . json_encode($out));
    Harness::ok('TestConnection without a key id: ' . $out['error']);

    // --- TestConnection ----------------------------------------------------------------------
    $out = Harness::call('TestConnection', $params);
    Harness::check(is_array($out) && $out['success'] === true, 'TestConnection: ' . json_encode($out));
    Harness::ok('TestConnection succeeds');

    // --- CreateAccount, twice ----------------------------------------------------------------
    expect_success('CreateAccount', Harness::call('CreateAccount', $params));
    $a = status_of($params, $user);
    Harness::check($a['status'] === 'active' && $a['package'] === $pkg1 && $a['domain'] === $domain
        && (string) $a['whmcs_service_id'] === (string) $sid && $a['email'] === 'owner@' . $domain,
        'the created account: ' . json_encode($a));
    if ($hostRoot) {
        Harness::check(is_dir($hostRoot . '/home/' . $user), "no home {$hostRoot}/home/{$user} after CreateAccount");
    }
    Harness::ok("CreateAccount -> success; account {$user} is active on {$pkg1}" . ($hostRoot ? ', its home exists' : ''));
    expect_success('CreateAccount (repeat)', Harness::call('CreateAccount', $params));
    Harness::check(status_of($params, $user)['status'] === 'active', 'repeat create changed the account');
    $row = FakeDb::$tables['tblhosting'][0];
    Harness::check($row['username'] === $user, 'CreateAccount rewrote the service username: ' . json_encode($row));
    Harness::ok('CreateAccount again -> success (idempotent)');

    // --- Suspend / Unsuspend -----------------------------------------------------------------
    expect_success('SuspendAccount', Harness::call('SuspendAccount', $params));
    $a = status_of($params, $user);
    Harness::check($a['status'] === 'suspended' && $a['suspend_reason'] === 'Overdue on payment', 'after suspend: ' . json_encode($a));
    $suspendLog = Harness::lastLog('SuspendAccount');
    $suspendJob = json_decode(substr($suspendLog['response'], strpos($suspendLog['response'], "\n") + 1), true)['job_id'] ?? null;
    Harness::check(is_string($suspendJob) && $suspendJob !== '', 'the suspend answer names its job: ' . $suspendLog['response']);
    expect_success('SuspendAccount (repeat)', Harness::call('SuspendAccount', $params));
    Harness::ok('SuspendAccount -> success (twice); the account is suspended with the reason');

    $tab = Harness::call('AdminServicesTabFields', $params);
    Harness::check(is_array($tab) && isset($tab['nPanel account'], $tab['nPanel usage'], $tab['nPanel last job']), 'AdminServicesTabFields: ' . json_encode($tab));
    Harness::check(strpos($tab['nPanel account'], 'suspended') !== false && strpos($tab['nPanel account'], $pkg1) !== false, 'tab status: ' . $tab['nPanel account']);
    Harness::check(strpos($tab['nPanel last job'], $suspendJob) !== false, "tab job (want {$suspendJob}): " . $tab['nPanel last job']);
    Harness::check(strpos($tab['nPanel usage'], 'MB') !== false, 'tab usage: ' . $tab['nPanel usage']);
    Harness::ok('AdminServicesTabFields shows status, usage and the last job (' . $suspendJob . ')');

    expect_success('UnsuspendAccount', Harness::call('UnsuspendAccount', $params));
    Harness::check(status_of($params, $user)['status'] === 'active', 'not active after unsuspend');
    Harness::ok('UnsuspendAccount -> success; active again');

    // --- ChangePackage / ChangePassword ------------------------------------------------------
    $params['configoption1'] = $pkg2;
    expect_success('ChangePackage', Harness::call('ChangePackage', $params));
    Harness::check(status_of($params, $user)['package'] === $pkg2, "not on {$pkg2} after ChangePackage");
    Harness::ok("ChangePackage -> success; the account is on {$pkg2}");

    $params['password'] = $pw2;
    expect_success('ChangePassword', Harness::call('ChangePassword', $params));
    Harness::ok('ChangePassword -> success');

    // --- UsageUpdate ---------------------------------------------------------------------------
    $w0 = count(FakeDb::$writes);
    expect_success('UsageUpdate', Harness::call('UsageUpdate', $params));
    $usage = usage_of($params, $user);
    $mine = array_values(array_filter(Harness::writes($w0), function ($w) use ($sid) {
        return $w['table'] === 'tblhosting' && in_array(['id', $sid], $w['where'], true);
    }));
    Harness::check(count($mine) === 1, 'UsageUpdate wrote tblhosting for service ' . $sid . ' ' . count($mine) . ' times');
    Harness::check(in_array(['server', $serverId], $mine[0]['where'], true), 'UsageUpdate did not restrict its write to this server');
    $cols = array_keys($mine[0]['values']);
    sort($cols);
    Harness::check($cols === ['bwlimit', 'bwusage', 'disklimit', 'diskusage', 'lastupdate'], 'UsageUpdate columns: ' . json_encode($cols));
    $row = FakeDb::$tables['tblhosting'][0];
    Harness::check($row['disklimit'] === (int) $usage['disk_limit_mb'] && $row['bwlimit'] === (int) $usage['bandwidth_limit_mb']
        && $row['diskusage'] === (int) $usage['disk_used_mb'] && $row['bwusage'] === (int) $usage['bandwidth_used_mb'],
        'tblhosting row ' . json_encode($row) . ' vs nPanel usage ' . json_encode($usage));
    Harness::check($row['disklimit'] > 0, "package {$pkg2} has a disk limit, got " . $row['disklimit']);
    Harness::check($row['lastupdate'] instanceof Expression && strtolower($row['lastupdate']->getValue()) === 'now()', 'lastupdate is now()');
    Harness::check(FakeDb::$tables['tblhosting'][1]['diskusage'] === 7, 'UsageUpdate wrote a service nPanel did not name');
    $ul = Harness::lastLog('UsageUpdate');
    Harness::check(strpos($ul['request']['url'], '/api/whmcs/usage?nonce=') !== false, 'UsageUpdate is one bulk GET /api/whmcs/usage');
    Harness::ok("UsageUpdate -> success; tblhosting {$sid}: disk {$row['diskusage']}/{$row['disklimit']} MB, bw {$row['bwusage']}/{$row['bwlimit']} MB, lastupdate now()");

    // --- ListAccounts ------------------------------------------------------------------------
    $out = Harness::call('ListAccounts', $params);
    Harness::check(is_array($out) && $out['success'] === true && is_array($out['accounts']), 'ListAccounts: ' . json_encode($out));
    $found = array_values(array_filter($out['accounts'], function ($a) use ($user) {
        return $a['username'] === $user;
    }));
    Harness::check(count($found) === 1, "ListAccounts lists {$user} " . count($found) . ' times');
    $f = $found[0];
    Harness::check($f['uniqueIdentifier'] === $user && $f['status'] === 'Active' && $f['product'] === $pkg2
        && $f['domain'] === $domain && $f['email'] === 'owner@' . $domain && preg_match('/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$/', $f['created']),
        'ListAccounts entry: ' . json_encode($f));
    Harness::ok('ListAccounts lists the account: ' . json_encode($f));

    // --- ServiceSingleSignOn -----------------------------------------------------------------
    $out = Harness::call('ServiceSingleSignOn', $params);
    Harness::check(is_array($out) && ($out['success'] ?? null) === true && is_string($out['redirectTo'] ?? null), 'SSO: ' . json_encode($out));
    $link = $out['redirectTo'];
    Harness::check(preg_match('~^https?://[^#?]+/login#code=([A-Za-z0-9_-]{43})$~', $link, $m) === 1, 'SSO redirect: ' . $link);
    $code = $m[1];
    // The code is a credential: in no log entry, and in the replace-vars of the SSO call's.
    foreach (Harness::$logs as $e) {
        foreach ($e['masked'] as $text) {
            Harness::check(strpos($text, $code) === false, "{$e['action']}: the login code is in the module log");
        }
        Harness::check(strpos(Harness::stringify($e['response']), $code) === false, "{$e['action']}: the login code is in the response given to logModuleCall");
    }
    Harness::check(in_array($code, Harness::lastLog('ServiceSingleSignOn')['replace'], true), 'the login code is not in the replace-vars');
    Harness::sensitive($code);
    // The browser's side: the page posts the code once and gets a token for this account only.
    $login = http_json('POST', $url . '/api/auth/login', ['code' => $code]);
    Harness::check($login['http'] === 200 && ($login['json']['account'] ?? null) === $user && ($login['json']['role'] ?? null) === 'customer',
        'exchanging the code: ' . json_encode($login));
    $acct = http_json('GET', $url . '/api/accounts/' . $user, null, $login['json']['token']);
    Harness::check($acct['http'] === 200 && ($acct['json']['id'] ?? null) === $user, 'the token reads its account: ' . json_encode($acct));
    $again = http_json('POST', $url . '/api/auth/login', ['code' => $code]);
    Harness::check($again['http'] === 401 && ($again['json']['error'] ?? null) === 'unauthorized', 'a second use: ' . json_encode($again));
    $out = Harness::call('ServiceSingleSignOn', ['username' => 'ghost' . $user] + $params);
    Harness::check(($out['success'] ?? null) === false, 'SSO for an unknown account succeeded: ' . json_encode($out));
    expect_sentence('ServiceSingleSignOn for an unknown account', $out['errorMsg'], ['could not make a login link for account ghost' . $user, 'does not exist', 'not_found']);
    Harness::ok('ServiceSingleSignOn -> a login link; its code signs in as ' . $user . ' once, and is in no log entry');

    // --- a wrong secret ------------------------------------------------------------------------
    $wrongSecret = str_repeat('0', 64);
    Harness::secret($wrongSecret);
    $bad = ['serverpassword' => $wrongSecret] + $params;
    $out = Harness::call('TestConnection', $bad);
    Harness::check($out['success'] === false, 'TestConnection with a wrong secret succeeded');
    expect_sentence('TestConnection with a wrong secret', $out['error'], ['unauthorized', 'key id and secret']);
    $out = Harness::call('SuspendAccount', $bad);
    expect_sentence('SuspendAccount with a wrong secret', $out, ['could not suspend account ' . $user, 'unauthorized']);
    Harness::check(status_of($params, $user)['status'] === 'active', 'a refused suspend changed the account');
    Harness::ok('a wrong secret: ' . $out);

    // --- nothing listening -------------------------------------------------------------------
    $sock = stream_socket_server('tcp://127.0.0.1:0');
    $closed = (int) substr(strrchr(stream_socket_get_name($sock, false), ':'), 1);
    fclose($sock);
    $out = Harness::call('UsageUpdate', ['serverhostname' => '127.0.0.1', 'serverport' => (string) $closed, 'serversecure' => ''] + $params);
    expect_sentence('UsageUpdate with nothing listening', $out, ['curl error 7', 'nPanel is running']);
    Harness::ok('nothing listening: ' . $out);

    // --- TerminateAccount, twice -------------------------------------------------------------
    expect_success('TerminateAccount', Harness::call('TerminateAccount', $params));
    Harness::check(status_of($params, $user)['status'] === 'terminated', 'not terminated');
    $tl = Harness::lastLog('TerminateAccount');
    $backup = json_decode(substr($tl['response'], strpos($tl['response'], "\n") + 1), true)['backup_location'] ?? null;
    Harness::check(is_string($backup) && $backup !== '', 'terminate named no backup: ' . $tl['response']);
    if ($hostRoot) {
        clearstatcache();
        Harness::check(!is_dir($hostRoot . '/home/' . $user), "the home of {$user} is still there after terminate");
        Harness::check(is_file($backup) && filesize($backup) > 0, "the backup {$backup} is not on disk");
    }
    expect_success('TerminateAccount (repeat)', Harness::call('TerminateAccount', $params));
    $out = Harness::call('ListAccounts', $params);
    foreach ($out['accounts'] as $a) {
        Harness::check($a['username'] !== $user, 'ListAccounts still lists the terminated account');
    }
    Harness::ok("TerminateAccount -> success (twice); backup {$backup}; no longer listed");
    $out = Harness::call('ServiceSingleSignOn', $params);
    Harness::check(($out['success'] ?? null) === false && !isset($out['redirectTo']), 'SSO to a terminated account: ' . json_encode($out));
    expect_sentence('ServiceSingleSignOn for a terminated account', $out['errorMsg'], ['login link for account ' . $user, 'terminated']);
    Harness::ok('ServiceSingleSignOn after terminate: ' . $out['errorMsg']);

    // --- the module log ----------------------------------------------------------------------
    Harness::check(count(Harness::$logs) >= 20 && !Harness::$violations, 'module log');
    foreach (Harness::$logs as $e) {
        Harness::check(in_array($secret, $e['replace'], true) || in_array($wrongSecret, $e['replace'], true),
            "{$e['action']}: the secret is not in logModuleCall's replace-vars");
    }
    Harness::ok(count(Harness::$logs) . ' module log entries, none showing the secret or a password');

    echo "account={$user} service_id={$sid} backup={$backup}\n";
    echo "PASS: every module function behaved against {$url}\n";
    exit(0);
} catch (HarnessFailure $e) {
    fwrite(STDERR, 'FAIL: ' . $e->getMessage() . "\n");
    exit(1);
} catch (\Throwable $e) {
    fwrite(STDERR, 'FAIL (unexpected ' . get_class($e) . '): ' . $e->getMessage() . ' at ' . $e->getFile() . ':' . $e->getLine() . "\n");
    exit(1);
}
