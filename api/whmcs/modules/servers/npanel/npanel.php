<?php
/**
 * nPanel - WHMCS server (provisioning) module.
 *
 * Install: copy this directory to <whmcs>/modules/servers/npanel/. Add a server (System Settings >
 * Servers) of type "nPanel": hostname (or IP) and port of the nPanel API, "Secure" for HTTPS,
 * Username = the key_id and Password = the secret printed by `npanel whmcs key create
 * [--reseller R]` on the panel host. On each product, Module Settings: "nPanel package" (a
 * package id such as basic, pro, enterprise).
 *
 * Every function talks to nPanel's /api/whmcs/* with signed requests (lib/Api.php), returns the
 * literal 'success' only when nPanel answered {"status": "success"} (so never before the account
 * exists), and otherwise a sentence a billing admin can act on. A job still running after
 * nPanel's wait (25 s) is reported as such: the Module Queue's retry repeats the same call,
 * which nPanel treats idempotently, and finishes it. Every call is in the Module Log with the
 * secret and passwords masked. "Log in to nPanel" (ServiceSingleSignOn) sends the client to a
 * one-time login link nPanel makes for the service's account (60 s, single use; the link's code
 * is masked in the Module Log too).
 */

if (!defined('WHMCS')) {
    die('This file cannot be accessed directly');
}

require_once __DIR__ . '/lib/Api.php';
require_once __DIR__ . '/lib/Module.php';

use WHMCS\Database\Capsule;
use WHMCS\Module\Server\Npanel\Api;
use WHMCS\Module\Server\Npanel\Module;

function npanel_MetaData()
{
    return [
        'DisplayName' => 'nPanel',
        'APIVersion' => '1.1',
        'RequiresServer' => true,
        'DefaultNonSSLPort' => '8080',
        'DefaultSSLPort' => '443',
        // ServiceSingleSignOn: a one-time login link (60 s, single use) from nPanel.
        'ServiceSingleSignOnLabel' => 'Log in to nPanel',
        // Server Sync (ListAccounts): nPanel accounts are known by their username.
        'ListAccountsUniqueIdentifierDisplayName' => 'Username',
        'ListAccountsUniqueIdentifierField' => 'username',
        'ListAccountsProductField' => 'configoption1',
    ];
}

/**
 * Product settings. WHMCS stores them by position (configoption1, ...): never reorder, only
 * append.
 */
function npanel_ConfigOptions()
{
    return [
        // configoption1
        'nPanel package' => [
            'Type' => 'text',
            'Size' => '32',
            'Default' => 'basic',
            'Description' => 'Package id on nPanel (see "npanel packages list"; it must be active). A configurable option named "nPanel package" overrides it per service.',
            'SimpleMode' => true,
        ],
    ];
}

function npanel_TestConnection(array $params)
{
    try {
        $problem = Module::serverProblem($params);
        if ($problem !== null) {
            Module::log(__FUNCTION__, ['path' => '/api/whmcs/accounts'], '', $problem, $params);
            return ['success' => false, 'error' => $problem];
        }
        $api = Api::fromParams($params);
        $r = $api->get('/api/whmcs/accounts');
        $ok = $r->isSuccess() && is_array($r->field('accounts'));
        $error = $ok ? '' : $api->explain('accept this server\'s API key (connection test: list accounts)', $r);
        Module::log(__FUNCTION__, Module::request($api, $r), $r->forLog(), $ok ? 'connected' : $error, $params);
        return ['success' => $ok, 'error' => $error];
    } catch (\Throwable $e) {
        $error = 'The connection test failed unexpectedly in the module: ' . $e->getMessage();
        Module::log(__FUNCTION__, [], $e->getMessage(), $error, $params);
        return ['success' => false, 'error' => $error];
    }
}

/** POST /api/whmcs/create-account {service_id, username, password, email, package_id, domain}. */
function npanel_CreateAccount(array $params)
{
    $user = Module::account($params);
    if ($user === '') {
        $out = 'The service has no username: set the service\'s Username (the nPanel account name: a lowercase letter, then up to 15 lowercase letters or digits) and press Create again.';
        Module::log(__FUNCTION__, ['path' => '/api/whmcs/create-account'], '', $out, $params);
        return $out;
    }
    $package = Module::package($params);
    if ($package === '') {
        $out = 'The product has no nPanel package: set "nPanel package" on the product\'s Module Settings tab and press Create again.';
        Module::log(__FUNCTION__, ['path' => '/api/whmcs/create-account'], '', $out, $params);
        return $out;
    }
    $client = $params['clientsdetails'] ?? [];
    list($out, $r) = Module::mutate($params, __FUNCTION__, '/api/whmcs/create-account', [
        'service_id' => Module::serviceId($params),
        'username' => $user,
        'password' => (string) ($params['password'] ?? ''),
        'email' => (string) (is_array($client) ? ($client['email'] ?? '') : ''),
        'package_id' => $package,
        'domain' => trim((string) ($params['domain'] ?? '')),
    ], 'create account ' . $user);
    // nPanel answers the service's existing account when one was made for it before: keep the
    // service's username in step with it, or every later call would name the wrong account.
    if ($out === 'success' && $r !== null) {
        $acct = $r->field('account_id');
        if (is_string($acct) && $acct !== '' && $acct !== $user) {
            try {
                Capsule::table('tblhosting')->where('id', Module::serviceId($params))->update(['username' => $acct]);
            } catch (\Throwable $e) {
                Module::log(__FUNCTION__ . ' (username)', ['account_id' => $acct], $e->getMessage(), 'not updated', $params);
            }
        }
    }
    return $out;
}

/** POST /api/whmcs/suspend-account {service_id, account_id, reason}. */
function npanel_SuspendAccount(array $params)
{
    $user = Module::account($params);
    $fields = ['service_id' => Module::serviceId($params), 'account_id' => $user];
    $reason = trim((string) ($params['suspendreason'] ?? ''));
    if ($reason !== '') {
        $fields['reason'] = $reason;
    }
    return Module::mutate($params, __FUNCTION__, '/api/whmcs/suspend-account', $fields, 'suspend account ' . $user)[0];
}

/** POST /api/whmcs/unsuspend-account {service_id, account_id}. */
function npanel_UnsuspendAccount(array $params)
{
    $user = Module::account($params);
    return Module::mutate($params, __FUNCTION__, '/api/whmcs/unsuspend-account', [
        'service_id' => Module::serviceId($params),
        'account_id' => $user,
    ], 'unsuspend account ' . $user)[0];
}

/** POST /api/whmcs/terminate-account {service_id, account_id, reason}: nPanel backs the home up first. */
function npanel_TerminateAccount(array $params)
{
    $user = Module::account($params);
    return Module::mutate($params, __FUNCTION__, '/api/whmcs/terminate-account', [
        'service_id' => Module::serviceId($params),
        'account_id' => $user,
        'reason' => 'terminated in WHMCS (service ' . Module::serviceId($params) . ')',
    ], 'terminate account ' . $user)[0];
}

/** POST /api/whmcs/upgrade-package {service_id, account_id, package_id}: the product's (new) package. */
function npanel_ChangePackage(array $params)
{
    $user = Module::account($params);
    $package = Module::package($params);
    if ($package === '') {
        $out = 'The product has no nPanel package: set "nPanel package" on the product\'s Module Settings tab and retry.';
        Module::log(__FUNCTION__, ['path' => '/api/whmcs/upgrade-package'], '', $out, $params);
        return $out;
    }
    return Module::mutate($params, __FUNCTION__, '/api/whmcs/upgrade-package', [
        'service_id' => Module::serviceId($params),
        'account_id' => $user,
        'package_id' => $package,
    ], 'move account ' . $user . ' to package ' . $package)[0];
}

/** POST /api/whmcs/change-password {service_id, account_id, password}. */
function npanel_ChangePassword(array $params)
{
    $user = Module::account($params);
    return Module::mutate($params, __FUNCTION__, '/api/whmcs/change-password', [
        'service_id' => Module::serviceId($params),
        'account_id' => $user,
        'password' => (string) ($params['password'] ?? ''),
    ], 'change the password of account ' . $user)[0];
}

/**
 * WHMCS's daily usage run for this server: one GET /api/whmcs/usage, then one write per service
 * by id: tblhosting.diskusage, disklimit, bwusage, bwlimit (MB, 0 = unlimited) and lastupdate.
 * Accounts nPanel knows no service id for are skipped; a row that fails is logged and the rest
 * go on. Never throws.
 */
function npanel_UsageUpdate(array $params)
{
    $api = null;
    $r = null;
    try {
        $problem = Module::serverProblem($params);
        if ($problem !== null) {
            Module::log(__FUNCTION__, ['path' => '/api/whmcs/usage'], '', $problem, $params);
            return $problem;
        }
        $api = Api::fromParams($params);
        $r = $api->get('/api/whmcs/usage');
        $accounts = $r->field('accounts');
        if (!$r->isSuccess() || !is_array($accounts)) {
            $out = $r->isSuccess()
                ? 'nPanel\'s usage answer has no account list; check that the server runs a matching nPanel version.'
                : $api->explain('report the usage of its accounts', $r);
            Module::log(__FUNCTION__, Module::request($api, $r), $r->forLog(), $out, $params);
            return $out;
        }
        $serverId = (int) ($params['serverid'] ?? 0);
        $mb = function ($v) {
            $n = is_numeric($v) ? (int) $v : 0;
            return max(0, min($n, 2147483647)); // tblhosting's int(10) columns
        };
        $written = [];
        $skipped = [];
        $failed = [];
        foreach ($accounts as $a) {
            if (!is_array($a)) {
                continue;
            }
            $sid = $a['service_id'] ?? null;
            $name = (string) ($a['account_id'] ?? '?');
            if (!is_scalar($sid) || !ctype_digit(trim((string) $sid)) || (int) $sid <= 0) {
                $skipped[] = $name;
                continue;
            }
            $sid = (int) $sid;
            try {
                $q = Capsule::table('tblhosting')->where('id', $sid);
                if ($serverId > 0) {
                    $q = $q->where('server', $serverId);
                }
                $q->update([
                    'diskusage' => $mb($a['disk_used_mb'] ?? 0),
                    'disklimit' => $mb($a['disk_limit_mb'] ?? 0),
                    'bwusage' => $mb($a['bandwidth_used_mb'] ?? 0),
                    'bwlimit' => $mb($a['bandwidth_limit_mb'] ?? 0),
                    'lastupdate' => Capsule::raw('now()'),
                ]);
                $written[] = $sid;
            } catch (\Throwable $e) {
                $failed[] = 'service ' . $sid . ' (' . $name . '): ' . $e->getMessage();
            }
        }
        $processed = [
            'services_written' => $written,
            'accounts_without_service_id' => $skipped,
            'failed' => $failed,
            'measured' => $r->field('measured'),
        ];
        if ($failed && !$written) {
            $out = 'nPanel reported usage, but WHMCS could not write it for any service (' . implode('; ', array_slice($failed, 0, 3)) . '); check the WHMCS database.';
            Module::log(__FUNCTION__, Module::request($api, $r), $r->forLog(), $out, $params);
            return $out;
        }
        Module::log(__FUNCTION__, Module::request($api, $r), $r->forLog(), $processed, $params);
        return 'success';
    } catch (\Throwable $e) {
        $out = 'The usage update failed unexpectedly in the module: ' . $e->getMessage();
        Module::log(__FUNCTION__, $api && $r ? Module::request($api, $r) : [], $e->getMessage(), $out, $params);
        return $out;
    }
}

/** Server Sync: GET /api/whmcs/accounts, in WHMCS's shape. */
function npanel_ListAccounts(array $params)
{
    $api = null;
    $r = null;
    try {
        $problem = Module::serverProblem($params);
        if ($problem !== null) {
            Module::log(__FUNCTION__, ['path' => '/api/whmcs/accounts'], '', $problem, $params);
            return ['success' => false, 'error' => $problem];
        }
        $api = Api::fromParams($params);
        $r = $api->get('/api/whmcs/accounts');
        $list = $r->field('accounts');
        if (!$r->isSuccess() || !is_array($list)) {
            $error = $api->explain('list its accounts', $r);
            Module::log(__FUNCTION__, Module::request($api, $r), $r->forLog(), $error, $params);
            return ['success' => false, 'error' => $error];
        }
        $statuses = ['pending' => 'Pending', 'active' => 'Active', 'suspended' => 'Suspended', 'terminated' => 'Terminated'];
        $ip = (string) ($params['serverip'] ?? '');
        $accounts = [];
        foreach ($list as $a) {
            if (!is_array($a) || !isset($a['id'])) {
                continue;
            }
            $st = strtolower((string) ($a['status'] ?? ''));
            $accounts[] = [
                'email' => (string) ($a['email'] ?? ''),
                'username' => (string) $a['id'],
                'domain' => (string) ($a['domain'] ?? ''),
                'uniqueIdentifier' => (string) $a['id'],
                'product' => (string) ($a['package'] ?? ''),
                'primaryip' => $ip,
                'created' => Module::whmcsDate($a['created_at'] ?? null),
                'status' => $statuses[$st] ?? 'Active',
            ];
        }
        Module::log(__FUNCTION__, Module::request($api, $r), $r->forLog(), count($accounts) . ' accounts', $params);
        return ['success' => true, 'accounts' => $accounts];
    } catch (\Throwable $e) {
        $error = 'Listing nPanel accounts failed unexpectedly in the module: ' . $e->getMessage();
        Module::log(__FUNCTION__, $api && $r ? Module::request($api, $r) : [], $e->getMessage(), $error, $params);
        return ['success' => false, 'error' => $error];
    }
}

/**
 * "Log in to nPanel": POST /api/whmcs/account/{service id}/sso {account_id} asks nPanel for a
 * one-time login link (<panel>/login#code=..., good once, for 60 s) and sends the browser there.
 * The code is a credential: it never reaches the Module Log (masked like the secret).
 */
function npanel_ServiceSingleSignOn(array $params)
{
    $api = null;
    $r = null;
    $code = '';
    $user = Module::account($params);
    $path = '/api/whmcs/account/' . Module::serviceId($params) . '/sso';
    try {
        $problem = Module::serverProblem($params);
        if ($problem === null && $user === '') {
            $problem = 'The service has no username, so the module does not know which nPanel account to log in to: set the service\'s Username to the account name and retry.';
        }
        if ($problem !== null) {
            Module::log(__FUNCTION__, ['path' => $path], '', $problem, $params);
            return ['success' => false, 'errorMsg' => $problem];
        }
        $api = Api::fromParams($params);
        $r = $api->post($path, ['account_id' => $user]);
        $url = $r->field('url');
        $code = Module::loginCode($url);
        if ($r->isSuccess() && $code !== '' && preg_match('~^https?://~i', (string) $url)) {
            $expires = (int) $r->field('expires_in', 60);
            Module::log(__FUNCTION__, Module::request($api, $r), Module::redact($r->forLog(), [$code]),
                'one-time login link for account ' . $user . ' (valid ' . $expires . ' s, once)', $params, [$code]);
            return ['success' => true, 'redirectTo' => $url];
        }
        $error = $r->isSuccess()
            ? 'nPanel answered without a usable login link for account ' . $user . '; check that the server runs a matching nPanel version.'
            : $api->explain('make a login link for account ' . $user, $r);
        Module::log(__FUNCTION__, Module::request($api, $r), Module::redact($r->forLog(), [$code]), $error, $params, [$code]);
        return ['success' => false, 'errorMsg' => $error];
    } catch (\Throwable $e) {
        $error = 'Could not make an nPanel login link for account ' . $user . ': the module failed unexpectedly (' . $e->getMessage() . '); report this to the module\'s maintainer.';
        Module::log(__FUNCTION__, $api && $r ? Module::request($api, $r) : ['path' => $path], $e->getMessage(), $error, $params, [$code]);
        return ['success' => false, 'errorMsg' => $error];
    }
}

/**
 * The service's page in the admin area: the account on nPanel (status, package, domain), its
 * disk and bandwidth (GET .../status and .../usage), and the last nPanel job this module saw
 * for the service.
 */
function npanel_AdminServicesTabFields(array $params)
{
    $fields = [];
    try {
        $user = Module::account($params);
        $problem = Module::serverProblem($params);
        if ($problem === null && $user === '') {
            $problem = 'The service has no username yet, so it has no nPanel account to show.';
        }
        if ($problem !== null) {
            Module::log(__FUNCTION__, [], '', $problem, $params);
            $fields['nPanel account'] = Module::h($problem);
        } else {
            $api = Api::fromParams($params);
            $path = '/api/whmcs/account/' . rawurlencode($user);
            $st = $api->get($path . '/status');
            Module::log(__FUNCTION__, Module::request($api, $st), $st->forLog(), $st->status(), $params);
            $a = $st->field('account');
            if ($st->isSuccess() && is_array($a)) {
                $parts = ['<strong>' . Module::h($a['status'] ?? '?') . '</strong>'];
                $parts[] = 'package ' . Module::h($a['package'] ?? '-');
                $parts[] = 'domain ' . Module::h($a['domain'] ?? '-');
                if (!empty($a['suspended_at'])) {
                    $parts[] = 'suspended ' . Module::h(Module::whmcsDate($a['suspended_at']))
                        . (!empty($a['suspend_reason']) ? ' (' . Module::h($a['suspend_reason']) . ')' : '');
                }
                if (!empty($a['created_at'])) {
                    $parts[] = 'created ' . Module::h(Module::whmcsDate($a['created_at']));
                }
                $fields['nPanel account'] = Module::h($user) . ': ' . implode(', ', $parts);
            } else {
                $fields['nPanel account'] = Module::h($api->explain('show account ' . $user, $st));
            }
            $u = $api->get($path . '/usage');
            Module::log(__FUNCTION__, Module::request($api, $u), $u->forLog(), $u->status(), $params);
            if ($u->isSuccess()) {
                $fmt = function ($used, $limit) {
                    return (int) $used . ' MB of ' . ((int) $limit > 0 ? (int) $limit . ' MB' : 'unlimited');
                };
                $fields['nPanel usage'] = 'disk ' . $fmt($u->field('disk_used_mb'), $u->field('disk_limit_mb'))
                    . ', bandwidth ' . $fmt($u->field('bandwidth_used_mb'), $u->field('bandwidth_limit_mb'))
                    . ($u->field('measured') ? '' : ' (use not measured yet: only the limits are known)');
            } else {
                $fields['nPanel usage'] = Module::h($api->explain('report the usage of account ' . $user, $u));
            }
        }
        $job = Module::lastJob(Module::serviceId($params));
        $fields['nPanel last job'] = $job
            ? '<code>' . Module::h($job['job_id']) . '</code> (' . Module::h($job['action']) . ', ' . Module::h($job['outcome'])
                . ', ' . Module::h($job['updated_at']) . '): ' . Module::h($job['message'])
                . '<br>On the panel host: <code>npanel jobs show ' . Module::h($job['job_id']) . '</code>'
            : 'none recorded by this module';
    } catch (\Throwable $e) {
        Module::log(__FUNCTION__, [], $e->getMessage(), 'failed', $params);
        $fields['nPanel'] = Module::h('The nPanel details could not be shown: ' . $e->getMessage());
    }
    return $fields;
}
